/** `kivi eval ppl`: streaming perplexity of several cache specs over windows of a text. */
import type { Command } from 'commander';
import type { CacheSpec } from '../../cache/spec.js';
import { pplJson, pplMarkdown, pplText } from '../../studies/eval/ppl-report.js';
import { backendOption, kvListOption, randomWeightsOption, threadsOption, weightsOption } from '../common.js';
import { int } from '../parse.js';
import { scoreText, type WindowOpts, windowOptions } from './eval-windows.js';

interface Opts extends WindowOpts {
  kv: CacheSpec[];
  json?: boolean;
  md?: boolean;
}

export function register(ev: Command): void {
  const cmd = windowOptions(
    ev
      .command('ppl')
      .description(
        'streaming perplexity (prefill exactly, then teacher-forced decode through the cache) for several cache specs, ' +
          'with teacher-forced fp32 perplexity for reference',
      ),
  );
  kvListOption(cmd, 'fp32,kivi2,kivi4');
  cmd.option(
    '--prefill-chunk <n>',
    "prefill in chunks of N tokens, each continuing the cache (what the server's prefix cache does); default one exact chunk",
    int(1),
  );
  cmd.option('--json', 'print one JSON line').option('--md', 'print a Markdown table');
  backendOption(cmd);
  threadsOption(cmd);
  randomWeightsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    const study = await scoreText(o, o.kv, 'ppl');
    if (o.json) process.stdout.write(`${JSON.stringify(pplJson(study))}\n`);
    if (o.md) process.stdout.write(pplMarkdown(study));
    if (!o.json && !o.md) process.stdout.write(pplText(study));
  });
}
