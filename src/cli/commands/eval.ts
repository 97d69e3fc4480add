/** `kivi eval …`: quality studies on the command line. */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { checkWindows, streamingNll } from '../../studies/eval/nll.js';
import { KiviError } from '../../util/errors.js';
import { backendOption, type CommonOpts, kvOption, loadOptions, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { int, readJsonFile } from '../parse.js';
import { LazyProgress } from '../progress.js';
import { register as registerCopy } from './eval-copy.js';
import { register as registerKld } from './eval-kld.js';
import { register as registerPasskey } from './eval-passkey.js';
import { register as registerPpl } from './eval-ppl.js';
import { register as registerTable } from './eval-table.js';

interface NllOpts extends CommonOpts {
  windows: string;
  prefill: number;
  json?: boolean;
}

export function register(program: Command): void {
  const ev = program.command('eval').description('quality evaluations (streaming NLL, perplexity, KL divergence, pass-key, copy task, tables)');
  const nll = ev
    .command('nll')
    .description('streaming NLL of token windows: prefill N tokens exactly, then teacher-forced decode through the cache')
    .requiredOption('--model <dir>', 'model directory')
    .requiredOption('--windows <file>', 'JSON array of token-id arrays')
    .requiredOption('--prefill <n>', 'tokens prefilled exactly before decoding', int(1))
    .option('--json', 'print one JSON line');
  kvOption(nll);
  backendOption(nll);
  threadsOption(nll);
  randomWeightsOption(nll);
  weightsOption(nll);
  nll.action(async (o: NllOpts) => {
    const raw = readJsonFile(o.windows, '--windows');
    if (!Array.isArray(raw) || !raw.every((w) => Array.isArray(w) && w.every((t) => Number.isInteger(t) && t >= 0))) {
      throw new KiviError(`${o.windows}: expected a JSON array of token-id arrays`);
    }
    const windows = raw as number[][];
    const m = await KiviModel.load(o.model, { kv: o.kv, ...loadOptions(o) });
    checkWindows(windows, o.prefill, m.config.maxPositions);
    const bar = new LazyProgress(`nll ${o.kv.name}`);
    const nlls = await streamingNll(m.transformer, windows, o.kv, { prefill: o.prefill, onProgress: (d, t) => bar.update(d, t) });
    bar.stop();
    const mean = nlls.reduce((a, b) => a + b, 0) / nlls.length;
    if (o.json) {
      process.stdout.write(`${JSON.stringify({ kv: o.kv.name, prefill: o.prefill, nll: nlls, mean_nll: mean, ppl: Math.exp(mean) })}\n`);
    } else {
      nlls.forEach((n, i) => {
        process.stdout.write(`window ${i}: nll ${n.toFixed(4)}  ppl ${Math.exp(n).toFixed(2)}\n`);
      });
      process.stdout.write(`mean nll ${mean.toFixed(4)}  ppl ${Math.exp(mean).toFixed(2)}  (kv ${o.kv.name}, prefill ${o.prefill})\n`);
    }
  });
  registerPpl(ev);
  registerPasskey(ev);
  registerTable(ev);
  registerKld(ev);
  registerCopy(ev);
}
