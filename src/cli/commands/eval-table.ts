/** `kivi eval table`: the paper's Table-1 analog (quantization axes, KIVI, G/R ablation) in one command. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Command } from 'commander';
import { parseKvSpec } from '../../cache/spec.js';
import { TABLE_SPECS } from '../../studies/eval/table.js';
import { tableJson, tableMarkdown } from '../../studies/eval/table-report.js';
import { backendOption, threadsOption, weightsOption } from '../common.js';
import { scoreText, type WindowOpts, windowOptions } from './eval-windows.js';

interface Opts extends WindowOpts {
  json?: boolean;
  out?: string;
}

/** One window costs a full forward plus a decode per spec: by default a sample of the text, not all of it. */
export const TABLE_DEFAULT_WINDOWS = 8;

export function register(ev: Command): void {
  const cmd = windowOptions(
    ev
      .command('table')
      .description(
        `the paper's Table-1 analog: fp32, simulated quantization on every key/value axis at 2 and 4 bits, kivi2, kivi4 and ` +
          `the KIVI-2 group-size × residual ablation (${TABLE_SPECS.length} specs), as Markdown and JSON with a generated reading`,
      ),
    TABLE_DEFAULT_WINDOWS,
  );
  cmd.option('--json', 'print one JSON line instead of Markdown').option('--out <dir>', 'also write table.md and table.json here');
  backendOption(cmd);
  threadsOption(cmd);
  weightsOption(cmd);
  cmd.action(async (o: Opts) => {
    const study = await scoreText(
      o,
      TABLE_SPECS.map((s) => parseKvSpec(s)),
      'table',
    );
    const md = tableMarkdown(study);
    const json = tableJson(study);
    if (o.out) {
      fs.mkdirSync(o.out, { recursive: true });
      fs.writeFileSync(path.join(o.out, 'table.md'), md);
      fs.writeFileSync(path.join(o.out, 'table.json'), `${JSON.stringify(json, null, 1)}\n`);
    }
    process.stdout.write(o.json ? `${JSON.stringify(json)}\n` : md);
  });
}
