/**
 * Generates schema/cluster.schema.json (for editors, via yaml-language-server) and
 * docs/config.md, as src/config/docs.ts renders them from the zod schema.
 *
 *   node --import tsx scripts/gen-schema.ts           write both files
 *   node --import tsx scripts/gen-schema.ts --check   exit 1 when either is stale
 *
 * test/config.test.ts checks that the committed files equal a fresh generation.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { pathToFileURL } from 'node:url';
import { DOCS_FILE, SCHEMA_FILE, renderConfigDocs, renderJsonSchema } from '../src/config/docs.js';

function main(): void {
  const check = process.argv.includes('--check');
  let stale = 0;
  for (const [file, text] of [
    [SCHEMA_FILE, renderJsonSchema()],
    [DOCS_FILE, renderConfigDocs()],
  ] as const) {
    let current = '';
    try {
      current = readFileSync(file, 'utf8');
    } catch {
      // missing: stale
    }
    if (current === text) continue;
    stale++;
    if (check) console.error(`${file} is stale; run: node --import tsx scripts/gen-schema.ts`);
    else {
      writeFileSync(file, text);
      console.log(`wrote ${file}`);
    }
  }
  if (check && stale > 0) process.exit(1);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) main();
