// Prints the closing line CI reads, `N passed, N failed, N skipped`, from tap's own results:
// its final `# { total: ... }` comment, or, when the runner died before printing it, a count
// of the leaf assertions in the raw TAP stream.
import { readFileSync } from 'node:fs'

import { Parser } from 'tap-parser'

let ownTotals = null
const leaf = { pass: 0, fail: 0, skip: 0, todo: 0 }

function watch(parser) {
  const state = { asserts: 0, lastChild: null }
  parser.on('child', (child) => { state.lastChild = watch(child) })
  parser.on('assert', (result) => {
    state.asserts++
    const child = state.lastChild
    state.lastChild = null
    // A point that only wraps a subtest whose own asserts were counted is not a test itself.
    if (child && child.asserts > 0 && !result.skip && !result.todo) return
    if (result.todo) leaf.todo++
    else if (result.skip) leaf.skip++
    else if (result.ok) leaf.pass++
    else leaf.fail++
  })
  return state
}

const root = new Parser()
watch(root)
root.on('comment', (comment) => {
  const match = /^# \{ total: \d+, pass: (\d+)(.*)\}\s*$/.exec(comment)
  if (!match) return
  const count = (key) => Number((new RegExp(`\\b${key}: (\\d+)`).exec(match[2]) ?? [])[1] ?? 0)
  ownTotals = { pass: Number(match[1]), fail: count('fail'), skip: count('skip'), todo: count('todo') }
})
root.end(readFileSync(process.argv[2] ?? 0))
const totals = ownTotals ?? leaf
console.log(`${totals.pass} passed, ${totals.fail} failed, ${totals.skip + totals.todo} skipped`)
