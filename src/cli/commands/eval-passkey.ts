/** `kivi eval passkey`: needle-in-a-haystack accuracy by length and depth, per cache spec, with heat-maps. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { type CacheSpec, validateSpec } from '../../cache/spec.js';
import type { BackendChoice } from '../../kernels/index.js';
import { checkPasskeyLengths, passkeyStudy } from '../../studies/eval/passkey.js';
import { DEFAULT_FILLER, PasskeyPrompter } from '../../studies/eval/passkey-prompt.js';
import { passkeyHeatmap, passkeyMarkdown, specFileName } from '../../studies/eval/passkey-report.js';
import { writeChart } from '../../studies/plot.js';
import { backendOption, kvListOption, loadOptions, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { floatList, int, intList, readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';

interface Opts {
  model: string;
  lengths: number[];
  depths: number[];
  n: number;
  kv: CacheSpec[];
  filler?: string;
  seed: number;
  out: string;
  json?: boolean;
  backend?: BackendChoice;
  threads?: number;
}

export function register(ev: Command): void {
  const cmd = ev
    .command('passkey')
    .description('pass-key retrieval accuracy by prompt length and needle depth, per cache spec, with a heat-map per spec')
    .requiredOption('--model <dir>', 'model directory')
    .option('--lengths <list>', 'prompt lengths in tokens', intList(1), [512, 1024, 2000])
    .option(
      '--depths <list>',
      'needle depths in [0, 1] (0 = right after the instruction, 1 = right before the question)',
      floatList(0, 1),
      [0, 0.25, 0.5, 0.75, 1],
    )
    .option('--n <n>', 'trials per (length, depth) cell', int(1), 2)
    .option('--filler <file>', 'text file used as filler (default: repeated plain sentences)')
    .option('--seed <s>', 'seed for keys and filler offsets (reproducible prompts)', int(0, 2 ** 32 - 1), 0)
    .option('--out <dir>', 'where heat-maps (SVG, PNG), passkey.json and passkey.md go', 'out/passkey')
    .option('--json', 'print one JSON line instead of the Markdown summary');
  kvListOption(cmd, 'fp32,kivi2,kivi4');
  backendOption(cmd);
  threadsOption(cmd);
  randomWeightsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    const filler = o.filler === undefined ? DEFAULT_FILLER : readTextFile(o.filler, '--filler');
    const m = await KiviModel.load(o.model, loadOptions(o));
    for (const s of o.kv) validateSpec(s, m.dims);
    const prompter = new PasskeyPrompter(m.tokenizer, filler);
    checkPasskeyLengths(o.lengths, m.config.maxPositions, prompter);
    const bar = new LazyProgress('passkey');
    const study = await passkeyStudy(m.transformer, m.tokenizer, prompter, o.kv, {
      lengths: o.lengths,
      depths: o.depths,
      n: o.n,
      seed: o.seed,
      onProgress: (d, t) => bar.update(d, t),
    });
    bar.stop();
    fs.mkdirSync(o.out, { recursive: true });
    const charts: string[] = [];
    for (const r of study.results) charts.push(...(await writeChart(passkeyHeatmap(r, study), path.join(o.out, `passkey-${specFileName(r.kv)}`))));
    const md = passkeyMarkdown(study);
    fs.writeFileSync(path.join(o.out, 'passkey.md'), md);
    fs.writeFileSync(path.join(o.out, 'passkey.json'), `${JSON.stringify({ ...study, filler: o.filler ?? 'default' }, null, 1)}\n`);
    if (o.json) process.stdout.write(`${JSON.stringify({ ...study, filler: o.filler ?? 'default', files: charts })}\n`);
    else process.stdout.write(`${md}\nwrote ${charts.join(', ')}\n`);
  });
}
