// @resilient/health/fastify, with its peers fastify and fastify-plugin.
import healthPlugin from '@resilient/health/fastify'
import Fastify from 'fastify'
import { health } from './service.js'

const app = Fastify()
await app.register(healthPlugin, { health })
