/** Shared test fixtures: paths, goldens, the bundled model (loaded once per test file), running the CLI. */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KiviModel } from '../src/api.js';
import { formatKvSpec, parseKvSpec } from '../src/cache/spec.js';

/** Repository root (tests run from dist/test). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
/** The golden references and the evaluation text, carried in the repository (data/README.md says whence). */
export const DATA = path.join(ROOT, 'data');
export const WIKITEXT = path.join(DATA, 'wikitext-2-raw-test.txt');
export const MODEL_DIR = path.join(ROOT, 'models/llama-28m-gqa');
export const CLI = path.join(ROOT, 'dist/src/cli/main.js');

export interface Golden {
  windows: number[][];
  nll: Record<string, [number, number]>;
  passkey: { prompt: number[]; key: string; out: Record<string, number[]> }[];
  greedy: { prompt: number[]; out: Record<string, number[]> };
}

export function golden(): Golden {
  return JSON.parse(fs.readFileSync(path.join(DATA, 'reference/llama-28m-gqa.golden.json'), 'utf8'));
}

export function tokenizerGolden(): { text: string; ids: number[]; ids_with_bos: number[]; decoded: string }[] {
  return JSON.parse(fs.readFileSync(path.join(DATA, 'reference/llama-28m-gqa.tokenizer-golden.json'), 'utf8'));
}

/**
 * The cache a golden config was computed with: the reference keeps KIVI's full-precision residual in
 * float32, while the named presets (kivi2, kivi4, ...) keep it in float16, as the paper does.
 */
export function referenceKv(config: string): string {
  const spec = parseKvSpec(config);
  return spec.kind === 'kivi' ? formatKvSpec({ ...spec, residualDtype: 'fp32' }) : config;
}

let model: Promise<KiviModel> | undefined;
export function bundledModel(): Promise<KiviModel> {
  model ??= KiviModel.load(MODEL_DIR);
  return model;
}

/** A fresh temporary directory, removed at process exit. */
export function tmpDir(prefix = 'kivi-test-'): string {
  const d = fs.mkdtempSync(path.join(fs.realpathSync(process.env.TMPDIR ?? '/tmp'), prefix));
  process.on('exit', () => fs.rmSync(d, { recursive: true, force: true }));
  return d;
}

/** Run the compiled CLI and wait for it. */
export function kivi(args: string[], timeout = 120_000): { status: number | null; stdout: string; stderr: string } {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout, maxBuffer: 64 << 20 });
  return { status: r.status, stdout: r.stdout, stderr: r.stderr };
}

/**
 * Bad input on the command line: exit code 1, nothing on stdout, and one line on stderr — `kivi: …`
 * matching `pattern` — with no stack trace.
 */
export function expectCliError(args: string[], pattern: RegExp, timeout = 120_000): void {
  const r = kivi(args, timeout);
  assert.equal(r.status, 1, `exit code for ${args.join(' ')}: ${r.status}\n${r.stderr}`);
  const lines = r.stderr.trim().split('\n');
  assert.equal(lines.length, 1, `one line expected, got:\n${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  assert.match(lines[0]!, /^kivi: /);
  assert.match(lines[0]!, pattern);
  assert.equal(r.stdout, '');
}
