/** Shared test fixtures: paths, goldens, the bundled model (loaded once per test file). */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { KiviModel } from '../src/api.js';

/** Repository root (tests run from dist/test). */
export const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const SHARED = path.resolve(ROOT, '../shared');
export const MODEL_DIR = path.join(ROOT, 'models/llama-28m-gqa');
export const CLI = path.join(ROOT, 'dist/src/cli/main.js');

export interface Golden {
  windows: number[][];
  nll: Record<string, [number, number]>;
  passkey: { prompt: number[]; key: string; out: Record<string, number[]> }[];
  greedy: { prompt: number[]; out: Record<string, number[]> };
}

export function golden(): Golden {
  return JSON.parse(fs.readFileSync(path.join(SHARED, 'reference/llama-28m-gqa.golden.json'), 'utf8'));
}

export function tokenizerGolden(): { text: string; ids: number[]; ids_with_bos: number[]; decoded: string }[] {
  return JSON.parse(fs.readFileSync(path.join(SHARED, 'reference/llama-28m-gqa.tokenizer-golden.json'), 'utf8'));
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
