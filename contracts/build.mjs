// Compiles contracts/src with the pinned solc and writes the ABI and bytecode into the
// Python package, so a pip user needs no compiler. `--check` compiles and fails if the
// committed artifact differs: the test suite runs it to catch drift.
import fs from "node:fs";
import path from "node:path";
import { createHash } from "node:crypto";
import { fileURLToPath } from "node:url";
import solc from "solc";

const here = path.dirname(fileURLToPath(import.meta.url));
const sourceDir = path.join(here, "src");
const artifactDir = path.join(here, "..", "swarmnode", "ledger", "artifacts");
const contracts = ["SwarmLedger"];
// py-evm does not run osaka, solc 0.8.37's default; anvil is started with --hardfork prague too.
const evmVersion = "prague";

const sources = {};
for (const file of fs.readdirSync(sourceDir).filter((f) => f.endsWith(".sol")).sort()) {
  // Relative source names keep the metadata hash, and so the bytecode, independent of the checkout path.
  sources[file] = { content: fs.readFileSync(path.join(sourceDir, file), "utf8") };
}

const input = {
  language: "Solidity",
  sources,
  settings: {
    evmVersion,
    optimizer: { enabled: true, runs: 200 },
    viaIR: true,
    outputSelection: { "*": { "*": ["abi", "evm.bytecode.object", "evm.deployedBytecode.object"] } },
  },
};

const output = JSON.parse(solc.compile(JSON.stringify(input)));
const errors = (output.errors ?? []).filter((e) => e.severity === "error");
for (const e of output.errors ?? []) console.error(e.formattedMessage);
if (errors.length > 0) process.exit(1);

const check = process.argv.includes("--check");
let drifted = false;
for (const name of contracts) {
  const file = `${name}.sol`;
  const compiled = output.contracts[file][name];
  const artifact = {
    contractName: name,
    compiler: `solc ${solc.version()}`,
    evmVersion,
    sourceSha256: createHash("sha256").update(sources[file].content).digest("hex"),
    abi: compiled.abi,
    bytecode: "0x" + compiled.evm.bytecode.object,
    deployedBytecode: "0x" + compiled.evm.deployedBytecode.object,
  };
  const text = JSON.stringify(artifact, null, 1) + "\n";
  const target = path.join(artifactDir, `${name}.json`);
  if (check) {
    const current = fs.existsSync(target) ? fs.readFileSync(target, "utf8") : "";
    if (current !== text) {
      console.error(`${target} is stale: run 'node contracts/build.mjs'`);
      drifted = true;
    }
  } else {
    fs.mkdirSync(artifactDir, { recursive: true });
    fs.writeFileSync(target, text);
    console.log(`wrote ${path.relative(process.cwd(), target)} (${compiled.evm.deployedBytecode.object.length / 2} bytes deployed)`);
  }
}
process.exit(drifted ? 1 : 0);
