// @resilient/pg-router/express: read-your-writes middleware (no peer needed).
import { rywSession } from '@resilient/pg-router/express'
import { db } from './service.js'

export const middleware = rywSession(db, { header: 'x-ryw-token' })
