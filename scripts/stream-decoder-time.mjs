#!/usr/bin/env node
// Times the streaming text decoder (src/tokenizer/tokenizer.ts StreamDecoder) over N tokens of WikiText
// encoded by the bundled tokenizer, 3 rounds: the per-token cost a long generation pays for its text.
// Usage (after npm run build): node scripts/stream-decoder-time.mjs [tokens=2000] [kivi checkout=.]
import fs from 'node:fs';
import path from 'node:path';

const n = Number(process.argv[2] ?? 2000);
const root = path.resolve(process.argv[3] ?? '.');
const { Tokenizer, StreamDecoder } = await import(path.join(root, 'dist/src/tokenizer/tokenizer.js'));
const { fsSource } = await import(path.join(root, 'dist/src/io/source-fs.js'));
const tok = await Tokenizer.load(fsSource(path.join(root, 'models/llama-28m-gqa')), { bosTokenId: 1, eosTokenIds: [2] });
const text = fs.readFileSync(path.join(root, 'data/wikitext-2-raw-test.txt'), 'utf8').slice(0, 40 * n);
const ids = tok.encode(text, { bos: false }).slice(0, n);
for (let round = 1; round <= 3; round++) {
  const t0 = performance.now();
  const d = new StreamDecoder(tok);
  let out = '';
  for (const id of ids) out += d.push(id);
  out += d.flush();
  if (out !== tok.decode(ids)) throw new Error('streamed text differs from the whole decode');
  console.log(`round ${round}: ${ids.length} tokens in ${(performance.now() - t0).toFixed(1)} ms`);
}
