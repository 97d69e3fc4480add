/** `kivi eval kld`: KL divergence from fp32 and top-1 agreement per cache spec, over windows of a text. */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import type { CacheSpec } from '../../cache/spec.js';
import { kldStudy } from '../../studies/eval/kld.js';
import { kldJson, kldStudyChart, kldText } from '../../studies/eval/kld-report.js';
import { writeChart } from '../../studies/plot.js';
import { backendOption, kvListOption, threadsOption } from '../common.js';
import { readTextFile } from '../parse.js';
import { LazyProgress } from '../progress.js';
import { type WindowOpts, windowOptions, windowsFor } from './eval-windows.js';

interface Opts extends WindowOpts {
  kv: CacheSpec[];
  json?: boolean;
  chart?: string;
}

export function register(ev: Command): void {
  const cmd = windowOptions(
    ev
      .command('kld')
      .description(
        'KL divergence from fp32 (KL(p_fp32 ‖ p_spec), nats), top-1 agreement with fp32, and NLL per cache spec, on the ' +
          'streaming protocol of eval ppl with an fp32 cache run in lockstep',
      ),
  );
  kvListOption(cmd, 'kivi2,kivi4');
  cmd.option('--json', 'print one JSON line').option('--chart <base>', 'also write a chart of KLD against bits per element to <base>.svg and <base>.png');
  backendOption(cmd);
  threadsOption(cmd);
  cmd.action(async (o: Opts) => {
    const text = readTextFile(o.text, '--text'); // before the model loads: a missing file fails fast
    const m = await KiviModel.load(o.model, { backend: o.backend, threads: o.threads });
    const windows = windowsFor(m, text, o.kv, o);
    const bar = new LazyProgress(`kld ×${o.kv.length} specs`);
    let study: Awaited<ReturnType<typeof kldStudy>>;
    try {
      study = await kldStudy(m.transformer, windows, o.kv, { prefill: o.prefill, onProgress: (d, t) => bar.update(d, t) });
    } finally {
      bar.stop();
    }
    const files = o.chart ? await writeChart(kldStudyChart(study), o.chart) : [];
    process.stdout.write(o.json ? `${JSON.stringify(kldJson(study))}\n` : kldText(study) + (files.length ? `wrote ${files.join(', ')}\n` : ''));
  });
}
