/** The study commands fail with one clear line for a missing file, an unknown spec, and a too-long window. */

import * as fs from 'node:fs';
import * as path from 'node:path';
import { test } from 'node:test';
import { expectCliError, MODEL_DIR, tmpDir } from './helpers.js';
import { WIKITEXT } from './studies-helpers.js';

const expectError = (args: string[], pattern: RegExp) => expectCliError(args, pattern);

const M = ['--model', MODEL_DIR];
const ppl = (...a: string[]) => ['eval', 'ppl', ...M, '--text', WIKITEXT, ...a];
const table = (...a: string[]) => ['eval', 'table', ...M, '--text', WIKITEXT, ...a];
const passkey = (...a: string[]) => ['eval', 'passkey', ...M, ...a];
const analyze = (...a: string[]) => ['analyze', 'kv', ...M, '--text', WIKITEXT, ...a];

test('missing files', () => {
  expectError(['eval', 'ppl', ...M, '--text', '/nonexistent/text.txt'], /--text file \/nonexistent\/text\.txt does not exist/);
  expectError(['eval', 'table', ...M, '--text', '/nonexistent/text.txt'], /--text file \/nonexistent\/text\.txt does not exist/);
  expectError(['analyze', 'kv', ...M, '--text', '/nonexistent/text.txt'], /--text file \/nonexistent\/text\.txt does not exist/);
  expectError(passkey('--filler', '/nonexistent/filler.txt'), /--filler file \/nonexistent\/filler\.txt does not exist/);
  expectError(['eval', 'ppl', '--model', '/nonexistent/model', '--text', WIKITEXT], /model directory \/nonexistent\/model does not exist/);
  expectError(['eval', 'passkey', '--model', '/nonexistent/model'], /model directory \/nonexistent\/model does not exist/);
  expectError(['analyze', 'kv', '--text', WIKITEXT], /required option '--model <dir>'/);
});

test('unknown or invalid specs', () => {
  expectError(ppl('--kv', 'fp32,kivi3'), /bad --kv spec "kivi3"/);
  expectError(ppl('--kv', 'fp32,turbo'), /bad --kv spec "turbo".*valid forms/);
  expectError(passkey('--kv', 'kivi2,fake2-kX-vT'), /bad --kv spec "fake2-kX-vT"/);
  expectError(ppl('--kv', 'kivi:k=2,v=2,g=32,r=48'), /R=48 must be a multiple of the group size G=32/);
  expectError(passkey('--kv', 'kivi:k=2,v=2,g=256,r=256'), /G=256 must divide the model's head_dim 128/);
});

test('windows, prompts and token counts longer than the context, or otherwise out of range', () => {
  expectError(ppl('--window', '4096'), /window of 4096 tokens is longer than the model's context of 2048/);
  expectError(table('--window', '2049'), /window of 2049 tokens is longer than the model's context of 2048/);
  expectError(ppl('--window', '256', '--prefill', '255'), /prefill 255 must be ≥ 1 and leave at least 2 tokens of window 0 \(256 tokens\) to decode/);
  expectError(passkey('--lengths', '1024,2048'), /pass-key length 2048 \+ 5 decode steps is longer than the model's context of 2048/);
  expectError(passkey('--lengths', '40'), /pass-key length 40 is too short for the prompt format/);
  expectError(passkey('--depths', '0,1.5'), /--depths.*expected a number in \[0, 1\], got 1\.5/);
  expectError(analyze('--tokens', '3000'), /--tokens 3000 is longer than the model's context of 2048/);
  expectError(ppl('--max-windows', '0'), /--max-windows.*expected an integer in \[1,/);
  const short = path.join(tmpDir(), 'short.txt');
  fs.writeFileSync(short, 'Too short for a window.');
  expectError(['eval', 'ppl', ...M, '--text', short], /the text has \d+ tokens, fewer than one window needs \(1023\)/);
  expectError(['analyze', 'kv', ...M, '--text', short, '--tokens', '64'], /short\.txt has only \d+ tokens, fewer than --tokens 64/);
});
