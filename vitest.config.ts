import { defineConfig } from 'vitest/config';

// Four kinds of test, one project each, so a developer can run the fast one
// alone (`npm run test:unit`, seconds) while `npm test` runs everything:
//   unit          in-process, no external tool, no child daemon
//   interop       blockd driven by real clients (qemu-img, qemu-io, nbdinfo, nbdfuse, fio, ...)
//   side-by-side  blockd and qemu-storage-daemon 7.2 run with the same arguments and compared
//   fuzz          seeded property runs of every parser, and the corpus of shrunk failures (test/fuzz),
//                 and the block-layer model test (test/model)
const kinds = ['unit', 'interop', 'side-by-side', 'fuzz'] as const;

export default defineConfig({
  test: {
    // A temporary root per run, checked empty at the end (global-setup.ts); tempDir()'s clean-up per file (temp-cleanup.ts).
    globalSetup: ['test/helpers/global-setup.ts'],
    setupFiles: ['test/helpers/temp-cleanup.ts'],
    // Child processes (forks), not worker threads: the native addon and the
    // daemons the tests spawn behave as they do in production.
    pool: 'forks',
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Two cores: interop tests start real daemons and clients, so run two files at a time.
    maxWorkers: 2,
    minWorkers: 1,
    projects: kinds.map((name) => ({
      extends: true,
      // The block-layer model test (test/model) is a seeded property run like the fuzz targets.
      test: { name, include: [`test/${name}/**/*.test.ts`, ...(name === 'fuzz' ? ['test/model/**/*.test.ts'] : [])] },
    })),
  },
});
