/** `kivi eval ppl`: streaming perplexity of several cache specs over windows of a text. */
import type { Command } from 'commander';
import { KiviModel } from '../../api.js';
import { backendOption, kvListOption, threadsOption } from '../common.js';
import type { BackendName } from '../../kernels/index.js';
import { LazyProgress } from '../progress.js';
import { perplexityStudy } from '../../studies/eval/ppl.js';
import { pplJson, pplMarkdown, pplText } from '../../studies/eval/ppl-report.js';
import { readText, windowOptions, windowsFor, type WindowOpts } from './eval-windows.js';

interface Opts extends WindowOpts {
  kv: string[];
  backend?: BackendName;
  threads?: number;
  json?: boolean;
  md?: boolean;
}

export function register(ev: Command): void {
  const cmd = windowOptions(ev.command('ppl').description(
    'streaming perplexity (prefill exactly, then teacher-forced decode through the cache) for several cache specs, ' +
    'with teacher-forced fp32 perplexity for reference',
  ));
  kvListOption(cmd, 'fp32,kivi2,kivi4');
  cmd.option('--json', 'print one JSON line').option('--md', 'print a Markdown table');
  backendOption(cmd);
  threadsOption(cmd);
  cmd.action(async (o: Opts) => {
    const text = readText(o);
    const m = await KiviModel.load(o.model, { backend: o.backend, threads: o.threads });
    const windows = windowsFor(m, text, o.kv, o);
    const bar = new LazyProgress(`ppl ×${o.kv.length} specs`);
    const study = perplexityStudy(m.model, windows, o.kv, { prefill: o.prefill, onProgress: (d, t) => bar.update(d, t) });
    bar.stop();
    if (o.json) process.stdout.write(JSON.stringify(pplJson(study)) + '\n');
    if (o.md) process.stdout.write(pplMarkdown(study));
    if (!o.json && !o.md) process.stdout.write(pplText(study));
  });
}
