import { runCli } from './commands.js'

// The servers of `up` are detached and unreferenced; exit explicitly so that no idle HTTP
// keep-alive socket holds the command open.
const code = await runCli(process.argv.slice(2))
process.exit(code)
