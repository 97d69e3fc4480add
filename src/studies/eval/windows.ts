/**
 * Evaluation windows from a text (data/README.md): the text is encoded once without BOS
 * and cut into consecutive slices; each window is [BOS] + one slice, `window` tokens in all. A last
 * slice too short for a whole window is dropped, so every window is scored on the same protocol.
 */
import type { Tokenizer } from '../../tokenizer/tokenizer.js';
import { KiviError } from '../../util/errors.js';

export interface WindowOptions {
  /** Tokens per window, BOS included. */
  window: number;
  /** The model's context: a window may not be longer. */
  context: number;
  /** Keep at most this many windows (from window `first`). */
  maxWindows?: number;
  /** Index of the first window kept (0 = the start of the text; windows 0 and 1 are the golden ones). */
  first?: number;
}

export function checkWindowLength(window: number, context: number): void {
  if (!Number.isInteger(window) || window < 2) throw new KiviError(`window must be an integer ≥ 2, got ${window}`);
  if (window > context) throw new KiviError(`window of ${window} tokens is longer than the model's context of ${context}`);
}

export function textWindows(tok: Tokenizer, text: string, o: WindowOptions): number[][] {
  checkWindowLength(o.window, o.context);
  const ids = tok.encode(text, { bos: false });
  const bos = tok.bosId === null ? [] : [tok.bosId];
  const slice = o.window - bos.length;
  const first = o.first ?? 0;
  const whole = Math.floor(ids.length / slice);
  if (whole < 1) throw new KiviError(`the text has ${ids.length} tokens, fewer than one window needs (${slice})`);
  if (!Number.isInteger(first) || first < 0 || first >= whole) {
    throw new KiviError(`first window ${first} is outside the text's ${whole} whole windows of ${o.window} tokens`);
  }
  const count = Math.min(whole - first, o.maxWindows ?? Infinity);
  return Array.from({ length: count }, (_, i) => [...bos, ...ids.slice((first + i) * slice, (first + i + 1) * slice)]);
}
