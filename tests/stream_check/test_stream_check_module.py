"""The Ansible module pi5.streaming.stream_check: main() in-process, as a file, and through ansible."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.stream_check.stream_check_helpers import COLLECTIONS, REPO
from tests.stream_check.stream_check_server import SseServer

basic = pytest.importorskip("ansible.module_utils.basic", reason="the module tests need ansible-core")
testing = pytest.importorskip("ansible.module_utils.testing")
yaml = pytest.importorskip("yaml")

from ansible_collections.pi5.streaming.plugins.module_utils.stream_check import (  # noqa: E402
    OPTIONS,
    VERDICTS,
    ResumeResult,
    argument_spec,
)
from ansible_collections.pi5.streaming.plugins.modules import stream_check as module  # noqa: E402

MODULE_FILE = Path(module.__file__ or "")
VENV_BIN = Path(sys.executable).parent
TARGET_PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable


def run_main(args: dict[str, Any], capsys: pytest.CaptureFixture[str]) -> dict[str, Any]:
    """Run main() with ``args`` as the task's arguments; return its JSON result."""
    with testing.patch_module_args(args), pytest.raises(SystemExit) as exited:
        module.main()
    result: dict[str, Any] = json.loads(capsys.readouterr().out)
    assert exited.value.code == (1 if result.get("failed") else 0)
    return result


@pytest.fixture(autouse=True)
def _no_syslog(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(basic, "HAS_SYSLOG", False)


class TestMain:
    def test_incremental_stream_exits_ok(self, server: SseServer, capsys: pytest.CaptureFixture[str]) -> None:
        result = run_main({"url": server.url("/stream?n=8&interval_ms=20"), "name": "backend"}, capsys)
        assert not result.get("failed")
        assert (result["changed"], result["verdict"], result["incremental"]) == (False, "incremental", True)
        assert result["events"] == 8 and result["name"] == "backend"
        assert result["table"].splitlines()[0] == "stream check [backend]"  # roles print table.splitlines()

    def test_buffered_stream_fails_with_the_diagnosis(
        self, server: SseServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        result = run_main({"url": server.url("/burst?n=8&interval_ms=20"), "name": "nginx"}, capsys)
        assert result["failed"] is True and result["changed"] is False
        assert result["verdict"] == "buffered"
        assert result["msg"] == result["diagnosis"]
        assert result["msg"].startswith("nginx delivers all 8 events in one burst after ")

    def test_hops_name_the_first_bad_hop(self, server: SseServer, capsys: pytest.CaptureFixture[str]) -> None:
        hops = [
            {"name": "backend", "url": server.url("/stream?n=6&interval_ms=20")},
            {
                "name": "nginx",
                "url": server.url("/stream?n=6&interval_ms=20&rev=old"),
                "expect_header": "X-Config-Revision: new",
            },
        ]
        result = run_main({"hops": hops, "max_time": 5}, capsys)
        assert result["failed"] is True
        assert (result["verdict"], result["first_bad_hop"]) == ("stale_config", "nginx")
        assert result["msg"].startswith("nginx serves a stale config: backend streams incrementally, but ")
        assert [hop["verdict"] for hop in result["hops"]] == ["incremental", "stale_config"]
        assert result["table"].splitlines()[-1].startswith("=> stale_config at nginx")

    def test_a_credential_header_is_sent_but_never_shown(
        self, server: SseServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The role's post-reload check carries the backend's token: it must reach the server and stay out of logs."""
        token = "s3cret-probe-token-0123456789"
        hops = [{"name": "backend", "url": server.url("/stream?n=8&interval_ms=10"),
                 "headers": {"Authorization": f"Bearer {token}"}}]
        result = run_main({"hops": hops, "headers": {"Cookie": f"session={token}x"}, "max_time": 5}, capsys)
        assert result["incremental"] is True, result.get("msg", result)
        assert server.seen[-1].headers["authorization"] == f"Bearer {token}"
        assert token not in json.dumps(result)
        assert result["invocation"]["module_args"]["hops"][0]["headers"]["Authorization"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"

    def test_the_resume_hop_runs_and_fails_the_task_when_a_cut_stream_does_not_resume(
        self, server: SseServer, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The role's post-reload check: resume on, the token on every hop, never in the output."""
        token = "s3cret-resume-token-0123456789"
        hops = [
            {"name": "backend", "url": server.url("/resumable?n=10&interval_ms=30")},
            {"name": "nginx", "url": server.url("/resumable?n=10&interval_ms=30&resume=skip")},
        ]
        args = {"hops": hops, "headers": {"Authorization": f"Bearer {token}"}, "resume": True, "max_time": 5}
        result = run_main(args, capsys)
        assert result["failed"] is True
        assert (result["verdict"], result["first_bad_hop"]) == ("not_resumable", "nginx")
        assert result["msg"].startswith("nginx does not resume a cut stream: backend resumes a cut stream, but the resume skipped")
        backend, nginx = result["hops"]
        assert backend["resume"]["ok"] is True and nginx["resume"]["ok"] is False
        assert server.seen[-1].headers["authorization"] == f"Bearer {token}"  # the resume request carried it too
        assert token not in json.dumps(result)

    def test_a_hop_may_leave_the_resume_out(self, server: SseServer, capsys: pytest.CaptureFixture[str]) -> None:
        hops = [
            {"name": "backend", "url": server.url("/resumable?n=8&interval_ms=20")},
            {"name": "tunnel", "url": server.url("/stream?n=8&interval_ms=20"), "resume": False},
        ]
        result = run_main({"hops": hops, "resume": True, "max_time": 5}, capsys)
        assert result["incremental"] is True, result.get("msg")
        assert result["hops"][0]["resume"]["ok"] is True and result["hops"][1]["resume"] is None

    def test_resume_without_a_done_event_is_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        result = run_main({"url": "http://127.0.0.1:9/", "resume": True, "expect_done": False}, capsys)
        assert result["failed"] is True
        assert result["msg"] == "resume needs a stream that ends with a done event: not with watch or expect_done false"

    def test_check_mode_still_checks(self, server: SseServer, capsys: pytest.CaptureFixture[str]) -> None:
        args = {"url": server.url("/burst?n=6&interval_ms=10"), "_ansible_check_mode": True}
        result = run_main(args, capsys)
        assert result["failed"] is True and result["verdict"] == "buffered"

    def test_thresholds_and_aliases_reach_the_core(self, server: SseServer, capsys: pytest.CaptureFixture[str]) -> None:
        result = run_main({"url": server.url("/stream?n=6&interval_ms=10"), "min_events": 7, "timeout_s": 4}, capsys)
        assert result["verdict"] == "too_few_events"

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            ({"url": "http://a/", "hops": [{"name": "a", "url": "http://a/"}]}, "mutually exclusive"),
            ({}, "one of the following is required"),
            ({"url": "http://a/", "http_version": "3"}, "value of http_version must be one of"),
            ({"url": "http://a/", "resolve": ["nonsense"]}, "resolve must look like HOST:PORT:ADDRESS"),
            ({"url": "http://a/", "max_burst_share": 3}, "max_burst_share must be between 0 and 1"),
            ({"url": "http://a/", "curl_path": "/nonexistent/curl"}, "curl not found"),
            ({"hops": [{"url": "http://a/"}]}, "missing required arguments: name"),
        ],
    )
    def test_bad_arguments_fail_with_a_message(
        self, args: dict[str, Any], message: str, capsys: pytest.CaptureFixture[str]
    ) -> None:
        result = run_main(args, capsys)
        assert result["failed"] is True
        assert message in result["msg"]


class TestDocumentation:
    doc = yaml.safe_load(module.DOCUMENTATION)

    def test_documented_options_match_the_argument_spec(self) -> None:
        spec = argument_spec()
        documented = self.doc["options"]
        assert set(documented) == set(spec)
        for name, option in spec.items():
            doc = documented[name]
            assert doc["type"] == option["type"], name
            assert doc.get("default") == option.get("default"), name
            assert doc.get("choices") == option.get("choices"), name
            assert doc.get("elements") == option.get("elements"), name
            assert doc.get("aliases") == option.get("aliases"), name

    def test_documented_hop_suboptions_match(self) -> None:
        spec = argument_spec()["hops"]["options"]
        documented = self.doc["options"]["hops"]["suboptions"]
        assert set(documented) == set(spec)
        for name, option in spec.items():
            assert documented[name]["type"] == option["type"], name
            assert "default" not in documented[name], name  # unset suboptions inherit the top level

    def test_every_option_of_the_table_is_documented_with_its_own_description(self) -> None:
        documented = self.doc["options"]
        for opt in OPTIONS:
            assert documented[opt.ansible_name]["description"] == list(opt.description), opt.name

    def test_documentation_is_what_the_generator_renders(self) -> None:
        """The module file's options block is scripts/module_docs.py's output: it cannot drift from the table."""
        script = REPO / "scripts" / "module_docs.py"
        env = {**os.environ, "PYTHONPATH": str(COLLECTIONS)}
        done = subprocess.run(
            [sys.executable, str(script), "--check"], capture_output=True, text=True, env=env, timeout=60, check=False
        )
        assert done.returncode == 0, done.stderr

    def test_examples_and_return_parse(self) -> None:
        examples = yaml.safe_load(module.EXAMPLES)
        assert sum("pi5.streaming.stream_check" in task for task in examples) == 4
        returned = yaml.safe_load(module.RETURN)
        assert {"verdict", "incremental", "diagnosis", "summary", "table", "first_bad_hop", "hops", "resume"} <= set(returned)
        assert returned["verdict"]["choices"] == list(VERDICTS)
        resume = ResumeResult(True, "", "", None, 0, None, [], [], 0, None, 0.0)
        assert set(returned["resume"]["contains"]) == set(resume.to_dict())

    def test_ansible_doc_renders_it(self) -> None:
        ansible_doc = VENV_BIN / "ansible-doc"
        if not ansible_doc.exists():
            pytest.skip("ansible-doc is not installed next to this python")
        env = {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS)}
        done = subprocess.run(
            [str(ansible_doc), "--json", "pi5.streaming.stream_check"],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        doc = json.loads(done.stdout)["pi5.streaming.stream_check"]["doc"]
        assert doc["attributes"]["check_mode"]["support"] == "full"


def test_module_file_runs_with_an_args_file(server: SseServer, tmp_path: Path) -> None:
    """The way Ansible's own debugging runs a module: python module.py args.json."""
    args = tmp_path / "args.json"
    args.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": {"url": server.url("/stream?n=6&interval_ms=20")}}))
    env = {**os.environ, "PYTHONPATH": str(COLLECTIONS)}
    done = subprocess.run(
        [sys.executable, str(MODULE_FILE), str(args)], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["verdict"] == "incremental"


PLAYBOOK = """
- name: Use the module the way roles/nginx/tasks/verify.yml does
  hosts: localhost
  gather_facts: false
  vars:
    verify_min_events: 5
  tasks:
    - name: Check a path that streams
      block:
        - name: Stream the probe through a streaming path
          pi5.streaming.stream_check:
            hops:
              - {name: backend, url: "%(stream)s"}
              - {name: nginx, url: "%(stream)s", expect_header: "X-Config-Revision: r1"}
            min_events: "{{ verify_min_events }}"
            max_burst_share: "{{ 0.5 }}"
            max_lateness_ms: "{{ 1000 }}"
            max_time: "{{ 15 }}"
          register: streaming
        - name: Show the summary
          ansible.builtin.debug:
            msg: "{{ streaming.table.splitlines() }}"

    - name: Check a path that buffers
      block:
        - name: Stream the probe through a buffering path
          pi5.streaming.stream_check:
            hops: [{name: backend, url: "%(stream)s"}, {name: nginx, url: "%(burst)s"}]
            min_events: "{{ verify_min_events }}"
          register: buffering
      rescue:
        - name: Show the failed summary
          ansible.builtin.debug:
            msg: "{{ (buffering.table | default('no summary')).splitlines() }}"
        - name: Stop with the diagnosis
          ansible.builtin.fail:
            msg: "Tokens do not stream: {{ buffering.msg | default(ansible_failed_result.msg) }}"
"""


def test_through_ansible_playbook(server: SseServer, tmp_path: Path) -> None:
    """A real playbook run: the collection is found, AnsiballZ ships the core to the target,
    templated thresholds arrive typed, and table/msg are what the nginx role prints.

    The target python is the system one (no Ansible installed), as on the Pi.
    """
    playbook_command = VENV_BIN / "ansible-playbook"
    if not playbook_command.exists():
        pytest.skip("ansible-playbook is not installed next to this python")
    query = "?n=6&interval_ms=20&rev=r1"
    playbook = tmp_path / "verify.yml"
    playbook.write_text(PLAYBOOK % {"stream": server.url("/stream" + query), "burst": server.url("/burst" + query)})
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),  # not the repository's inventory
        "ANSIBLE_COLLECTIONS_PATH": str(COLLECTIONS),
        "ANSIBLE_LOCAL_TEMP": str(tmp_path / "local"),
        "ANSIBLE_REMOTE_TEMP": str(tmp_path / "remote"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
    }
    done = subprocess.run(
        [
            str(playbook_command),
            "-c",
            "local",
            "-i",
            "localhost,",
            "-e",
            f"ansible_python_interpreter={TARGET_PYTHON}",
            str(playbook),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
        cwd=REPO,
    )
    assert done.returncode == 2, done.stdout[-3000:] + done.stderr  # the buffering path fails the play
    tasks = {task["task"]["name"]: task["hosts"]["localhost"] for task in json.loads(done.stdout)["plays"][0]["tasks"]}
    streaming = tasks["Stream the probe through a streaming path"]
    assert not streaming.get("failed") and streaming["verdict"] == "incremental"
    assert tasks["Show the summary"]["msg"][0].split()[:2] == ["hop", "verdict"]
    buffering = tasks["Stream the probe through a buffering path"]
    assert [hop["verdict"] for hop in buffering["hops"]] == ["incremental", "buffered"]
    assert tasks["Show the failed summary"]["msg"][-1].startswith("=> buffered at nginx: nginx buffers: ")
    assert tasks["Stop with the diagnosis"]["msg"].startswith(
        "Tokens do not stream: nginx buffers: backend streams incrementally, but nginx delivers all 6 events"
    )
