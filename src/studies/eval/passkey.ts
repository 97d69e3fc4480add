/**
 * Needle-in-a-haystack accuracy by prompt length and needle depth, per cache spec (docs/KIVI.md §9): greedy-
 * decode 6 tokens; a trial is correct if the decoded text, stripped, starts with the key.
 *
 * A prompt's prefill is exact whatever the cache, so it runs once (fp32) and is restored into every
 * spec's cache; the specs then decode together, one batched forward per token.
 */

import { type CacheSpec, createCache } from '../../cache/spec.js';
import type { KvCache } from '../../cache/types.js';
import { restorePrefill, snapshotPrefill } from '../../engine/prefix.js';
import { argmax } from '../../engine/sampling.js';
import type { LlamaModel } from '../../model/llama.js';
import type { Tokenizer } from '../../tokenizer/tokenizer.js';
import { KiviError } from '../../util/errors.js';
import type { PasskeyPrompter } from './passkey-prompt.js';

export const ANSWER_TOKENS = 6;

export interface PasskeyOptions {
  lengths: number[];
  depths: number[];
  /** Trials per (length, depth) cell. */
  n: number;
  seed: number;
  onProgress?: (done: number, total: number) => void;
}

export interface PasskeyTrial {
  length: number;
  depth: number;
  trial: number;
  key: string;
  /** Decoded answer per spec. */
  answers: Record<string, string>;
}

export interface PasskeyCell {
  length: number;
  depth: number;
  correct: number;
  n: number;
  accuracy: number;
}

export interface PasskeySpecResult {
  kv: string;
  correct: number;
  n: number;
  accuracy: number;
  cells: PasskeyCell[];
}

export interface PasskeyStudy {
  results: PasskeySpecResult[];
  trials: PasskeyTrial[];
  lengths: number[];
  depths: number[];
  n: number;
  seed: number;
}

export const isCorrect = (answer: string, key: string): boolean => answer.trim().startsWith(key);

/** Greedy answers to one prompt under every spec: ANSWER_TOKENS ids each. */
export async function answerIds(model: LlamaModel, prompt: number[], specs: CacheSpec[]): Promise<number[][]> {
  const snap = await snapshotPrefill(model, prompt);
  const first = argmax(snap.lastLogits);
  const caches: KvCache[] = [];
  try {
    for (const spec of specs) {
      const c = createCache(spec, model.pool);
      caches.push(c);
      await restorePrefill(model, c, snap);
    }
    const out = specs.map(() => [first]);
    for (let s = 1; s < ANSWER_TOKENS; s++) {
      const ids = await model.forward(caches.map((cache, j) => ({ tokens: [out[j]!.at(-1)!], cache, logits: 'argmax' as const })));
      out.forEach((o, j) => {
        o.push(ids[j] as number);
      });
    }
    return out;
  } finally {
    for (const c of caches) c.free();
  }
}

export function checkPasskeyLengths(lengths: number[], context: number, prompter: PasskeyPrompter): void {
  const min = prompter.minLength();
  for (const L of lengths) {
    if (L + ANSWER_TOKENS - 1 > context) {
      throw new KiviError(`pass-key length ${L} + ${ANSWER_TOKENS - 1} decode steps is longer than the model's context of ${context}`);
    }
    if (L < min) throw new KiviError(`pass-key length ${L} is too short for the prompt format (at least ${min})`);
  }
}

export async function passkeyStudy(model: LlamaModel, tok: Tokenizer, prompter: PasskeyPrompter, specs: CacheSpec[], o: PasskeyOptions): Promise<PasskeyStudy> {
  checkPasskeyLengths(o.lengths, model.config.maxPositions, prompter);
  const trials: PasskeyTrial[] = [];
  const total = o.lengths.reduce((a, L) => a + L, 0) * o.depths.length * o.n;
  let done = 0;
  for (const length of o.lengths) {
    for (const depth of o.depths) {
      for (let trial = 0; trial < o.n; trial++) {
        const p = prompter.sample(length, depth, trial, o.seed);
        const ids = await answerIds(model, p.ids, specs);
        const answers: Record<string, string> = {};
        specs.forEach((spec, j) => {
          answers[spec.name] = tok.decode(ids[j]!);
        });
        trials.push({ length, depth, trial, key: p.key, answers });
        done += length;
        o.onProgress?.(done, total);
      }
    }
  }
  return { results: specs.map((spec) => tally(spec.name, trials, o)), trials, lengths: o.lengths, depths: o.depths, n: o.n, seed: o.seed };
}

function tally(kv: string, trials: PasskeyTrial[], o: PasskeyOptions): PasskeySpecResult {
  const cells: PasskeyCell[] = [];
  for (const length of o.lengths) {
    for (const depth of o.depths) {
      const ts = trials.filter((t) => t.length === length && t.depth === depth);
      const correct = ts.filter((t) => isCorrect(t.answers[kv]!, t.key)).length;
      cells.push({ length, depth, correct, n: ts.length, accuracy: correct / ts.length });
    }
  }
  const correct = cells.reduce((a, c) => a + c.correct, 0);
  const n = cells.reduce((a, c) => a + c.n, 0);
  return { kv, correct, n, accuracy: correct / n, cells };
}
