/**
 * Pass-key prompts in the format the bundled model was trained on (the golden prompts in
 * data/reference decode to it):
 *
 *   [BOS] header · filler[0, p) · needle · filler[p, F) · question
 *
 * The filler is F consecutive tokens of a text (encoded without BOS) starting at a random offset, cut at
 * token boundaries; the needle goes at token p = round(depth · F), so depth 0 is right after the header
 * and 1 right before the question. F is whatever makes the prompt exactly `length` tokens.
 */

import { Rng } from '../../engine/sampling.js';
import type { Tokenizer } from '../../tokenizer/tokenizer.js';
import { KiviError } from '../../util/errors.js';

export const HEADER = 'There is an important piece of information hidden inside a lot of irrelevant text. Find it and memorize it.\n';
export const QUESTION = '\nWhat is the pass key? The pass key is';
export const needle = (key: string): string => ` The pass key is ${key}. Remember it. ${key} is the pass key. `;

/**
 * Filler used when no --filler file is given: plain sentences repeated (the classic pass-key filler), so
 * the command runs anywhere; the golden prompts use WikiText, which `--filler` reproduces exactly.
 */
export const DEFAULT_FILLER = 'The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. ';

export interface PasskeyPrompt {
  ids: number[];
  key: string;
  /** Where the filler slice starts in the filler tokens, and where the needle sits in the slice. */
  offset: number;
  needleAt: number;
}

export class PasskeyPrompter {
  private readonly header: number[];
  private readonly question: number[];
  private readonly filler: number[];
  private readonly bos: number[];

  constructor(
    private readonly tok: Tokenizer,
    fillerText: string,
  ) {
    this.header = tok.encode(HEADER, { bos: false });
    this.question = tok.encode(QUESTION, { bos: false });
    this.filler = tok.encode(fillerText, { bos: false });
    this.bos = tok.bosId === null ? [] : [tok.bosId];
    if (this.filler.length === 0) throw new KiviError('the filler text is empty');
  }

  /** Filler tokens a prompt of `length` tokens with this key holds. */
  fillerLength(length: number, key: string): number {
    return length - this.bos.length - this.header.length - this.tok.encode(needle(key), { bos: false }).length - this.question.length;
  }

  /**
   * The shortest prompt length this format allows for any key: one filler token, and a needle that may run
   * 8 tokens longer than a typical key's (a 5-digit key is 1–5 tokens and appears twice).
   */
  minLength(): number {
    const typical = this.tok.encode(needle('12345'), { bos: false }).length;
    return this.bos.length + this.header.length + this.question.length + typical + 8 + 1;
  }

  /** A prompt with everything given (tests reproduce the golden prompts this way). */
  build(length: number, key: string, depth: number, offset: number): PasskeyPrompt {
    if (!(depth >= 0 && depth <= 1)) throw new KiviError(`depth must be in [0, 1], got ${depth}`);
    const F = this.fillerLength(length, key);
    if (F < 1) throw new KiviError(`a pass-key prompt of ${length} tokens is too short for the format (at least ${this.minLength()})`);
    const n = this.filler.length;
    const slice = Array.from({ length: F }, (_, i) => this.filler[(offset + i) % n]!);
    const p = Math.round(depth * F);
    const ids = [...this.bos, ...this.header, ...slice.slice(0, p), ...this.tok.encode(needle(key), { bos: false }), ...slice.slice(p), ...this.question];
    return { ids, key, offset, needleAt: p };
  }

  /**
   * A random key and filler offset drawn from (seed, length, trial) alone, so the same trial at every depth
   * hides the same key in the same filler and only the needle moves.
   */
  sample(length: number, depth: number, trial: number, seed: number): PasskeyPrompt {
    const rng = new Rng(mix(seed, length, trial));
    const key = String(10000 + Math.floor(rng.next() * 90000));
    const F = Math.max(1, this.fillerLength(length, key));
    const room = this.filler.length >= F ? this.filler.length - F + 1 : this.filler.length;
    return this.build(length, key, depth, Math.floor(rng.next() * room));
  }
}

function mix(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) h = Math.imul(h ^ (x >>> 0), 0x01000193) >>> 0;
  return h;
}
