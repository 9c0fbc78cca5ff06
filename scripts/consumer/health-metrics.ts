// createMetricsHandler with the optional peer prom-client: a Registry of the user's.
import { createMetricsHandler } from '@resilient/health'
import { Registry } from 'prom-client'
import { health } from './service.js'

export const metrics = await createMetricsHandler(health, { register: new Registry() })
