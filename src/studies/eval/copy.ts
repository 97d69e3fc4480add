/**
 * The copy task (issue 14): the model is shown a list of random words and asked to copy it, in the format
 * the bundled model was trained on (one of its synthetic long-context tasks; words separated by single
 * spaces — the probe in the README's quality section found commas and newlines break fp32's copy):
 *
 *   [BOS] [D tokens of a text] ["\n\n" if D > 0] "Copy the following words exactly.\n" w1 " " w2 … wN "\nCopy:\n"
 *
 * Words are 3–9 lowercase letters, drawn without repetition from the distinct such words of a text; the
 * filler (`depth` D) is D consecutive tokens of the same text from a random offset, so the list sits
 * deep in the cache's quantized part (a blank line before the instruction: with a single newline fp32 copied
 * 2 of 6 lists at depth 512, with a blank line 4 of 8; beyond ~1000 tokens of filler this small model fails
 * the task even in fp32). Decoding is greedy and stops at the first newline or end of
 * sequence (or after the list's own token count + 8). exact: the copy, split on whitespace, equals the
 * list; word accuracy: the fraction of positions whose word is right.
 *
 * A prompt's prefill is exact whatever the cache, so it runs once (fp32) and is restored into every
 * spec's cache; all specs of a batch of prompts then decode together, one batched forward per token.
 */

import { type CacheSpec, createCache } from '../../cache/spec.js';
import type { KvCache } from '../../cache/types.js';
import { restorePrefill, snapshotPrefill } from '../../engine/prefix.js';
import { argmax, Rng } from '../../engine/sampling.js';
import type { LlamaModel } from '../../model/llama.js';
import type { Tokenizer } from '../../tokenizer/tokenizer.js';
import { KiviError } from '../../util/errors.js';

export const COPY_INSTRUCTION = 'Copy the following words exactly.\n';
export const COPY_CUE = '\nCopy:\n';
/** Between the --depth filler and the instruction. */
export const COPY_FILLER_SEPARATOR = '\n\n';
/** Decode budget beyond the list's own token count. */
export const COPY_SLACK = 8;

const WORD = /^[a-z]{3,9}$/;

/** The distinct words of 3–9 lowercase letters in a text (whitespace-separated tokens), in first-seen order. */
export function copyVocabulary(text: string): string[] {
  const seen = new Set<string>();
  for (const w of text.split(/\s+/)) if (WORD.test(w)) seen.add(w);
  return [...seen];
}

function mix(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
  return h;
}

export interface CopyPrompt {
  ids: number[];
  words: string[];
  /** Tokens the answer may take (the list's own + COPY_SLACK). */
  budget: number;
}

export class CopyPrompter {
  readonly vocabulary: string[];
  readonly bos: number[];
  /** The text's tokens, encoded on first use (only --depth needs them). */
  private tokens?: number[];

  constructor(
    private readonly tok: Tokenizer,
    private readonly source: string,
  ) {
    this.vocabulary = copyVocabulary(source);
    this.bos = tok.bosId === null ? [] : [tok.bosId];
  }

  private get text(): number[] {
    this.tokens ??= this.tok.encode(this.source, { bos: false });
    return this.tokens;
  }

  /** Fewest tokens a prompt and its answer can take: BOS, the filler, the instruction and cue, a token per word, twice. */
  minTokens(count: number, depth: number): number {
    return this.bos.length + depth + this.tok.encode(`${COPY_FILLER_SEPARATOR}${COPY_INSTRUCTION}${COPY_CUE}`, { bos: false }).length + 2 * count + COPY_SLACK;
  }

  /** `count` distinct words for this trial, from (seed, trial) alone. */
  words(count: number, seed: number, trial: number): string[] {
    const V = this.vocabulary.length;
    if (count > V) throw new KiviError(`the text has ${V} distinct words of 3–9 lowercase letters, fewer than the ${count} a list needs`);
    const rng = new Rng(mix(seed, trial));
    const picked = new Set<number>();
    const out: string[] = [];
    while (out.length < count) {
      const i = Math.floor(rng.next() * V);
      if (picked.has(i)) continue;
      picked.add(i);
      out.push(this.vocabulary[i]!);
    }
    return out;
  }

  /** The prompt of trial `trial`: its words, and `depth` tokens of the text before the instruction. */
  prompt(count: number, depth: number, seed: number, trial: number): CopyPrompt {
    const words = this.words(count, seed, trial);
    let filler: number[] = [];
    if (depth > 0) {
      if (depth > this.text.length) throw new KiviError(`depth ${depth} is longer than the text (${this.text.length} tokens)`);
      const rng = new Rng(mix(seed, trial, 0x5eed));
      const at = Math.floor(rng.next() * (this.text.length - depth + 1));
      filler = this.text.slice(at, at + depth);
    }
    const body = `${depth > 0 ? COPY_FILLER_SEPARATOR : ''}${COPY_INSTRUCTION}${words.join(' ')}${COPY_CUE}`;
    const ids = [...this.bos, ...filler, ...this.tok.encode(body, { bos: false })];
    return { ids, words, budget: this.tok.encode(words.join(' '), { bos: false }).length + COPY_SLACK };
  }
}

/** The copy in a decoded answer: the text before the first newline, split on whitespace. */
export function copiedWords(answer: string): string[] {
  const line = answer.split('\n')[0]!.trim();
  return line === '' ? [] : line.split(/\s+/);
}

export function scoreCopy(answer: string, words: string[]): { exact: boolean; correct: number } {
  const got = copiedWords(answer);
  let correct = 0;
  for (let i = 0; i < words.length; i++) if (got[i] === words[i]) correct++;
  return { exact: got.length === words.length && correct === words.length, correct };
}

export interface CopyOptions {
  n: number;
  words: number;
  seed: number;
  depth: number;
  /** Prompts decoded together. */
  batch?: number;
  onProgress?: (done: number, total: number) => void;
}

export interface CopyTrial {
  trial: number;
  words: string[];
  /** Decoded answer per spec. */
  answers: Record<string, string>;
}

export interface CopySpecResult {
  kv: string;
  /** Fraction of prompts copied exactly. */
  exact: number;
  word_accuracy: number;
  n: number;
}

export interface CopyStudy {
  results: CopySpecResult[];
  trials: CopyTrial[];
  words: number;
  depth: number;
  seed: number;
}

/** Greedy answers of every spec to a batch of prompts (ids, stopped at a newline, EOS or the budget). */
export async function copyAnswers(model: LlamaModel, tok: Tokenizer, prompts: CopyPrompt[], specs: CacheSpec[]): Promise<string[][]> {
  const S = specs.length;
  const caches: KvCache[] = [];
  try {
    const out: number[][] = [];
    const active: boolean[] = [];
    for (const p of prompts) {
      const snap = await snapshotPrefill(model, p.ids);
      const first = argmax(snap.lastLogits);
      for (const spec of specs) {
        const c = createCache(spec, model.pool);
        caches.push(c);
        await restorePrefill(model, c, snap);
        out.push([first]);
        active.push(true);
      }
    }
    const done = (i: number): boolean => {
      const ids = out[i]!;
      const last = ids.at(-1)!;
      return tok.eosIds.includes(last) || tok.decode(ids).includes('\n') || ids.length >= prompts[Math.floor(i / S)]!.budget;
    };
    for (let i = 0; i < out.length; i++) active[i] = !done(i);
    for (;;) {
      const items = caches.flatMap((_cache, i) => (active[i] ? [i] : []));
      if (items.length === 0) break;
      const next = await model.forward(items.map((i) => ({ tokens: [out[i]!.at(-1)!], cache: caches[i]!, logits: 'argmax' as const })));
      items.forEach((i, j) => {
        out[i]!.push(next[j] as number);
        active[i] = !done(i);
      });
    }
    return prompts.map((_, p) => specs.map((_, s) => tok.decode(out[p * S + s]!)));
  } finally {
    for (const c of caches) c.free();
  }
}

export function checkCopyOptions(o: CopyOptions, context: number, prompter: CopyPrompter): void {
  if (!Number.isInteger(o.words) || o.words < 1) throw new KiviError(`--words must be an integer ≥ 1, got ${o.words}`);
  const least = prompter.minTokens(o.words, o.depth);
  if (least > context) {
    throw new KiviError(
      `a copy prompt of ${o.words} words at depth ${o.depth} and its answer need at least ${least} tokens, longer than the model's context of ${context}`,
    );
  }
  // The longest prompt of this run plus its answer must fit the context.
  for (let t = 0; t < o.n; t++) {
    const p = prompter.prompt(o.words, o.depth, o.seed, t);
    if (p.ids.length + p.budget > context) {
      throw new KiviError(`a copy prompt of ${p.ids.length} tokens plus a ${p.budget}-token answer is longer than the model's context of ${context}`);
    }
  }
}

export async function copyStudy(model: LlamaModel, tok: Tokenizer, prompter: CopyPrompter, specs: CacheSpec[], o: CopyOptions): Promise<CopyStudy> {
  checkCopyOptions(o, model.config.maxPositions, prompter);
  const batch = o.batch ?? 8;
  const trials: CopyTrial[] = [];
  for (let t0 = 0; t0 < o.n; t0 += batch) {
    const prompts = Array.from({ length: Math.min(batch, o.n - t0) }, (_, i) => prompter.prompt(o.words, o.depth, o.seed, t0 + i));
    const answers = await copyAnswers(model, tok, prompts, specs);
    prompts.forEach((p, i) => {
      const a: Record<string, string> = {};
      specs.forEach((spec, s) => {
        a[spec.name] = answers[i]![s]!;
      });
      trials.push({ trial: t0 + i, words: p.words, answers: a });
    });
    o.onProgress?.(trials.length, o.n);
  }
  const results = specs.map(({ name: kv }): CopySpecResult => {
    let exact = 0;
    let correct = 0;
    for (const t of trials) {
      const r = scoreCopy(t.answers[kv]!, t.words);
      if (r.exact) exact++;
      correct += r.correct;
    }
    return { kv, exact: exact / trials.length, word_accuracy: correct / (trials.length * o.words), n: trials.length };
  });
  return { results, trials, words: o.words, depth: o.depth, seed: o.seed };
}
