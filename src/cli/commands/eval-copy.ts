/** `kivi eval copy`: the copy task (copy a list of random words shown a moment before), per cache spec. */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { type CacheSpec, checkSpecBackend, validateSpec } from '../../cache/spec.js';
import type { BackendChoice } from '../../kernels/index.js';
import { CopyPrompter, checkCopyOptions, copyStudy } from '../../studies/eval/copy.js';
import { backendOption, kvListOption, threadsOption } from '../common.js';
import { int, readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';

interface Opts {
  model: string;
  text: string;
  kv: CacheSpec[];
  n: number;
  words: number;
  seed: number;
  depth: number;
  json?: boolean;
  backend?: BackendChoice;
  threads?: number;
}

export function register(ev: Command): void {
  const cmd = ev
    .command('copy')
    .description('copy task: greedy copy of a list of random words from the text, per cache spec (exact-copy rate, word accuracy)')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--text <file>', 'text the words (3–9 lowercase letters) and the --depth filler come from')
    .option('--n <n>', 'prompts', int(1), 64)
    .option('--words <n>', 'words per list', int(1), 30)
    .option('--seed <s>', 'seed for the words and filler offsets (reproducible prompts)', int(0, 2 ** 32 - 1), 0)
    .option('--depth <tokens>', 'tokens of the text put before the instruction', int(0), 0)
    .option('--json', 'print one JSON line');
  kvListOption(cmd, 'fp32,kivi2,kivi4');
  backendOption(cmd);
  threadsOption(cmd);
  cmd.action(async (o: Opts) => {
    const text = readTextFile(o.text, '--text'); // before the model loads: a missing file fails fast
    const m = await KiviModel.load(o.model, { backend: o.backend, threads: o.threads });
    for (const s of o.kv) {
      validateSpec(s, m.dims);
      checkSpecBackend(s, m.transformer.pool);
    }
    const prompter = new CopyPrompter(m.tokenizer, text);
    const opts = { n: o.n, words: o.words, seed: o.seed, depth: o.depth };
    checkCopyOptions(opts, m.config.maxPositions, prompter);
    const bar = new LazyProgress(`copy ×${o.kv.length} specs`);
    let study: Awaited<ReturnType<typeof copyStudy>>;
    try {
      study = await copyStudy(m.transformer, m.tokenizer, prompter, o.kv, { ...opts, onProgress: (d, t) => bar.update(d, t) });
    } finally {
      bar.stop();
    }
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ results: study.results })}\n`);
      return;
    }
    const w = Math.max(8, ...o.kv.map((k) => k.name.length));
    const lines = study.results.map(
      (r) => `${r.kv.padEnd(w)}  exact ${(r.exact * 100).toFixed(1).padStart(5)}%  words ${(r.word_accuracy * 100).toFixed(1).padStart(5)}%`,
    );
    process.stdout.write(`${lines.join('\n')}\n${o.n} prompts of ${o.words} words, depth ${o.depth} tokens, seed ${o.seed}, greedy\n`);
  });
}
