import assert from 'node:assert/strict';
import fs from 'node:fs';
import { test } from 'node:test';
import { Rng } from '../src/engine/sampling.js';
import { fsSource } from '../src/io/source-fs.js';
import { StreamDecoder, Tokenizer } from '../src/tokenizer/tokenizer.js';
import { MODEL_DIR, WIKITEXT } from './helpers.js';

const bundled = () => Tokenizer.load(fsSource(MODEL_DIR), { bosTokenId: 1, eosTokenIds: [2] });

/** Every delta of pushing ids one at a time, then the flush. */
function stream(tok: Tokenizer, ids: number[]): string[] {
  const d = new StreamDecoder(tok);
  return [...ids.map((id) => d.push(id)), d.flush()];
}

test('stream decoder: the deltas add up to the whole decode (ASCII, multi-byte characters split over tokens, WikiText)', async () => {
  const tok = await bundled();
  const texts = [
    'Hello, world. The quick brown fox jumps over the lazy dog.',
    'naïve café — 日本語のテキスト 🙂👍🏽 ∑ x² ≤ ∞',
    fs.readFileSync(WIKITEXT, 'utf8').slice(5000, 12000),
  ];
  for (const text of texts) {
    const ids = tok.encode(text, { bos: false });
    const deltas = stream(tok, ids);
    assert.equal(deltas.join(''), tok.decode(ids));
    assert.equal(deltas.join(''), text);
    // No delta ends inside a character: held back until complete.
    for (const d of deltas) assert.ok(!d.endsWith('\uFFFD'), JSON.stringify(d));
  }
  // A character of 4 bytes arrives over several tokens: nothing until it is whole.
  const emoji = tok.encode('🙂', { bos: false });
  assert.ok(emoji.length > 1, 'the bundled tokenizer splits this emoji');
  const d = stream(tok, emoji);
  assert.deepEqual(d.slice(0, -2), new Array(emoji.length - 1).fill(''));
  assert.equal(d.at(-2), '🙂');
});

test('stream decoder: random ids (what a sampler may produce) give the whole decode, special tokens skipped', async () => {
  const tok = await bundled();
  const rng = new Rng(11);
  for (let round = 0; round < 20; round++) {
    const ids = Array.from({ length: 200 }, () => Math.floor(rng.next() * 8192));
    assert.equal(stream(tok, ids).join(''), tok.decode(ids), `round ${round}`);
  }
});

test('stream decoder: a decoder that strips the text’s leading space keeps the spaces between streamed words', () => {
  // SentencePiece-style: ▁ for spaces, byte fallback, and the first leading space stripped.
  const vocab: Record<string, number> = { '<unk>': 0, '▁Hello': 1, '▁world': 2, '▁': 3, '<0xE2>': 4, '<0x82>': 5, '<0xAC>': 6, '!': 7 };
  const tj = {
    version: '1.0',
    added_tokens: [],
    normalizer: null,
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: { type: 'BPE', vocab, merges: [], unk_token: '<unk>', byte_fallback: true, fuse_unk: true, dropout: null },
  };
  const tok = Tokenizer.fromSource({ tokenizerJson: tj, config: {}, modelConfig: { bosTokenId: null, eosTokenIds: [] } });
  const ids = [1, 2, 3, 4, 5, 6, 7, 2];
  assert.equal(tok.decode(ids), 'Hello world €! world');
  assert.deepEqual(stream(tok, ids), ['Hello', ' world', ' ', '', '', '€', '!', ' world', '']);
});

test('stream decoder: the work per token does not grow with the text (ids decoded in all ≤ 8 per token)', async () => {
  const tok = await bundled();
  const ids = tok.encode(fs.readFileSync(WIKITEXT, 'utf8').slice(0, 40000), { bos: false });
  let decoded = 0;
  const counting = Object.create(tok) as Tokenizer;
  counting.decode = (x, o) => {
    decoded += x.length;
    return tok.decode(x, o);
  };
  assert.equal(stream(counting, ids).join(''), tok.decode(ids));
  assert.ok(ids.length > 5000);
  assert.ok(decoded <= 8 * ids.length, `${decoded} ids decoded for ${ids.length} tokens`);
});
