// @resilient/pg-router/fastify, with its peers fastify and fastify-plugin.
import rywPlugin from '@resilient/pg-router/fastify'
import Fastify from 'fastify'
import { db } from './service.js'

const app = Fastify()
await app.register(rywPlugin, { db, header: 'x-ryw-token' })
