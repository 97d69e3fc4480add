/** Options and the run shared by the commands that score windows of a text (`eval ppl`, `eval table`, `eval kld`). */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { type CacheSpec, checkSpecBackend, validateSpec } from '../../cache/spec.js';
import type { BackendChoice } from '../../kernels/index.js';
import type { WeightFormat } from '../../model/weights.js';
import { checkWindows } from '../../studies/eval/nll.js';
import { type PplStudy, perplexityStudy } from '../../studies/eval/ppl.js';
import { textWindows } from '../../studies/eval/windows.js';
import { loadOptions } from '../common.js';
import { int, readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';

export interface WindowOpts {
  model: string;
  text: string;
  window: number;
  prefill: number;
  /** eval ppl --prefill-chunk. */
  prefillChunk?: number;
  maxWindows?: number;
  firstWindow: number;
  backend?: BackendChoice;
  threads?: number;
  randomWeights?: number;
  weights?: WeightFormat;
}

/** `maxWindows`: a default for --max-windows (none: every whole window of the text). */
export function windowOptions(cmd: Command, maxWindows?: number): Command {
  const maxHelp =
    maxWindows === undefined ? 'score at most the first N windows (default: every whole window of the text)' : 'score at most the first N windows';
  return cmd
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--text <file>', 'text file to score (e.g. data/wikitext-2-raw-test.txt)')
    .option('--window <n>', 'tokens per window, BOS included', int(2), 1024)
    .option('--prefill <n>', 'tokens of each window prefilled exactly before decoding', int(1), 512)
    .option('--max-windows <n>', maxHelp, int(1), maxWindows)
    .option('--first-window <n>', 'index of the first window scored (windows 0 and 1 are the golden ones)', int(0), 0);
}

/** Check specs against the loaded model, cut the text into windows, check them against the prefill and context. */
export function windowsFor(m: KiviModel, text: string, specs: CacheSpec[], o: WindowOpts): number[][] {
  for (const s of specs) {
    validateSpec(s, m.dims);
    checkSpecBackend(s, m.transformer.pool);
  }
  const windows = textWindows(m.tokenizer, text, {
    window: o.window,
    context: m.config.maxPositions,
    maxWindows: o.maxWindows,
    first: o.firstWindow,
  });
  checkWindows(windows, o.prefill, m.config.maxPositions);
  return windows;
}

/** Streaming perplexity of every spec on the text's windows, with a progress bar. */
export async function scoreText(o: WindowOpts, specs: CacheSpec[], label: string): Promise<PplStudy> {
  const text = readTextFile(o.text, '--text'); // before the model loads: a missing file fails fast
  const m = await KiviModel.load(o.model, loadOptions(o));
  const windows = windowsFor(m, text, specs, o);
  const bar = new LazyProgress(`${label} ×${specs.length} specs`);
  try {
    return await perplexityStudy(m.transformer, windows, specs, { prefill: o.prefill, prefillChunk: o.prefillChunk, onProgress: (d, t) => bar.update(d, t) });
  } finally {
    bar.stop();
  }
}
