/**
 * Entry of a benchmark child process: `node --expose-gc probe-main.js '<task JSON>'` runs one probe
 * (probe.ts) and prints its result as one JSON line. Errors: `kivi: <message>` and exit 1.
 */

import { KiviError } from '../../util/errors.js';
import { type ProbeTask, runProbe } from './probe.js';

try {
  const task = JSON.parse(process.argv[2] ?? '') as ProbeTask;
  const result = await runProbe(task);
  process.stdout.write(`${JSON.stringify(result)}\n`);
  process.exit(0);
} catch (e) {
  if (e instanceof KiviError) process.stderr.write(`kivi: ${e.message.split('\n')[0]}\n`);
  else process.stderr.write(`${(e as Error)?.stack ?? String(e)}\n`);
  process.exit(e instanceof KiviError ? 1 : 2);
}
