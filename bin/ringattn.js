#!/usr/bin/env node
import('../dist/cli/main.js').then((m) => m.main(process.argv)).catch((err) => {
  if (err && err.code === 'ERR_MODULE_NOT_FOUND' && String(err.message).includes('dist')) {
    console.error('ringattn: not built yet; run `npm install` (or `npm run build`) in the package folder');
    process.exit(2);
  }
  throw err;
});
