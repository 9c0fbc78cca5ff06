import { fileURLToPath } from 'node:url'
import { defineConfig } from 'vitest/config'

const src = (p: string) => fileURLToPath(new URL(`./packages/${p}`, import.meta.url))

// Tests run against the TypeScript sources: no build needed between an edit and a test.
const alias = [
  { find: /^@resilient\/pg-router\/(express|fastify)$/, replacement: `${src('pg-router/src')}/$1.ts` },
  { find: /^@resilient\/health\/(express|fastify|grpc)$/, replacement: `${src('health/src')}/$1.ts` },
  { find: /^@resilient\/(core|pg-router|cache|health|lab)$/, replacement: `${src('$1/src/index.ts')}` },
]

export default defineConfig({
  resolve: { alias },
  test: {
    reporters: ['default', './scripts/summary-reporter.ts'],
    projects: [
      {
        resolve: { alias },
        test: {
          name: 'unit',
          include: ['packages/*/test/**/*.test.ts'],
          exclude: ['packages/*/test/**/*.int.test.ts'],
          testTimeout: 10_000,
        },
      },
      {
        resolve: { alias },
        test: {
          name: 'integration',
          include: ['packages/*/test/**/*.int.test.ts', 'examples/*/test/**/*.int.test.ts'],
          // Real Patroni clusters on a 2-core machine: one file at a time.
          fileParallelism: false,
          testTimeout: 180_000,
          hookTimeout: 180_000,
        },
      },
    ],
  },
})
