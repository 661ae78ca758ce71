// Prints the closing line CI reads, `N passed, N failed, N skipped`, summed over the TAP files
// given (one per tap run: scripts/test.sh runs the VM tests once per kernel). Each run counts
// by tap's own results, its final `# { total: ... }` comment, or, when the runner died before
// printing it, by the leaf assertions in its raw TAP stream. A file without any result counts
// as one failure: a run that printed nothing did not pass.
import { readFileSync } from 'node:fs'

import { Parser } from 'tap-parser'

function countRun(text) {
  let ownTotals = null
  const leaf = { pass: 0, fail: 0, skip: 0, todo: 0 }
  const watch = (parser) => {
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
  root.end(text)
  const totals = ownTotals ?? leaf
  if (totals.pass + totals.fail + totals.skip + totals.todo === 0) totals.fail = 1
  return totals
}

const files = process.argv.slice(2)
const sum = { pass: 0, fail: 0, skip: 0, todo: 0 }
for (const text of files.length > 0 ? files.map((file) => readFileSync(file)) : [readFileSync(0)]) {
  const totals = countRun(text)
  for (const key of Object.keys(sum)) sum[key] += totals[key]
}
console.log(`${sum.pass} passed, ${sum.fail} failed, ${sum.skip + sum.todo} skipped`)
