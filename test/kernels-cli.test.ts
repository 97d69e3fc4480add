/** --backend and --threads on the command line: results, clear errors, prompt exit with helper threads. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

const CLI = path.resolve('dist/src/cli/main.js');
const golden = JSON.parse(fs.readFileSync('../shared/reference/llama-28m-gqa.golden.json', 'utf8')) as {
  greedy: { prompt: number[]; out: Record<string, number[]> };
};

function kivi(args: string[]) {
  return spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 120_000 });
}

test('generate --backend wasm --threads 2 gives the golden greedy ids and exits', () => {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'kivi-cli-'));
  const ids = path.join(dir, 'prompt.json');
  fs.writeFileSync(ids, JSON.stringify(golden.greedy.prompt));
  const r = kivi(['generate', '--model', 'models/llama-28m-gqa', '--prompt-ids', ids, '--max-tokens', '8', '--ignore-eos', '--json',
    '--backend', 'wasm', '--threads', '2']);
  assert.equal(r.status, 0, r.stderr);
  const out = JSON.parse(r.stdout) as { ids: number[] };
  assert.deepEqual(out.ids, golden.greedy.out.fp32!.slice(0, 8));
  fs.rmSync(dir, { recursive: true });
});

test('bad --threads and --backend values are one-line errors', () => {
  for (const [flag, value] of [['--threads', '0'], ['--threads', 'two'], ['--threads', '1.5'], ['--backend', 'gpu']]) {
    const r = kivi(['generate', '--model', 'models/llama-28m-gqa', '--prompt', 'hi', flag!, value!]);
    assert.equal(r.status, 1, `${flag} ${value}`);
    assert.match(r.stderr, /error: option|kivi:/);
    assert.doesNotMatch(r.stderr, /\n\s+at /, 'no stack trace');
  }
});
