// Run the wasm32 crypto self-test in Node and print its JSON report on stdout.
//
//   node tests/wasm-flow/run.mjs <pkg dir> <seed> <threshold> <nodes>
//
// <pkg dir> is what `scripts/wasm selftest` printed (wasm-bindgen --target nodejs output,
// normally target/web/selftest-pkg). Any error, thrown by the Rust side or by Node, goes to
// stderr with a non-zero exit code.
import { createRequire } from "node:module";
import path from "node:path";
import process from "node:process";

function fail(message) {
  process.stderr.write(`run.mjs: ${message}\n`);
  process.exit(1);
}

function parseArgs(argv) {
  if (argv.length !== 4) {
    fail("usage: node run.mjs <pkg dir> <seed> <threshold> <nodes>");
  }
  const [pkgDir, seed, threshold, nodes] = argv;
  const int = (name, text) => {
    if (!/^[0-9]+$/.test(text)) fail(`${name} must be a non-negative integer, got '${text}'`);
    return text;
  };
  return {
    pkgDir: path.resolve(pkgDir),
    seed: BigInt(int("seed", seed)), // u64 on the Rust side: a BigInt in JS
    threshold: Number(int("threshold", threshold)),
    nodes: Number(int("nodes", nodes)),
  };
}

function main() {
  const args = parseArgs(process.argv.slice(2));
  // wasm-bindgen's nodejs target is CommonJS and loads its .wasm synchronously.
  const require = createRequire(import.meta.url);
  const pkg = require(path.join(args.pkgDir, "ticketing_wasm_flow.js"));
  const started = process.hrtime.bigint();
  const json = pkg.run_flow(args.seed, args.threshold, args.nodes);
  const ms = Number(process.hrtime.bigint() - started) / 1e6;
  JSON.parse(json); // must be valid JSON before anyone reads it
  process.stderr.write(
    `run.mjs: ${args.threshold}-of-${args.nodes} flow in wasm took ${ms.toFixed(1)} ms\n`,
  );
  process.stdout.write(`${json}\n`);
}

try {
  main();
} catch (err) {
  fail(`wasm flow failed: ${err && err.stack ? err.stack : err}`);
}
