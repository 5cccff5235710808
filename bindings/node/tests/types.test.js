// index.d.ts and compat.d.ts against a fresh build: they type-check strictly with the usage
// the README shows, and every class member they declare exists at run time (and the reverse).
'use strict'

const test = require('node:test')
const assert = require('node:assert/strict')
const path = require('node:path')
const ts = require('typescript')

const pkgDir = path.resolve(__dirname, '..')

test('the declarations type-check with the documented usage', () => {
  const program = ts.createProgram([path.join(__dirname, 'types-usage.ts')], {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    esModuleInterop: true,
    types: ['node'],
    typeRoots: [path.join(pkgDir, 'node_modules', '@types')],
  })
  const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))
  assert.deepEqual(diagnostics, [])
})

test('the ES module entry type-checks as an ES module (NodeNext)', () => {
  const program = ts.createProgram([path.join(__dirname, 'types-usage.mts')], {
    strict: true,
    noEmit: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    types: ['node'],
    typeRoots: [path.join(pkgDir, 'node_modules', '@types')],
  })
  const diagnostics = ts.getPreEmitDiagnostics(program).map((d) => ts.flattenDiagnosticMessageText(d.messageText, '\n'))
  assert.deepEqual(diagnostics, [])
})

// Declared members of each exported class, from the .d.ts syntax tree.
function declaredMembers(file) {
  const source = ts.createSourceFile(file, require('node:fs').readFileSync(file, 'utf8'), ts.ScriptTarget.ES2022, true)
  const classes = {}
  for (const s of source.statements) {
    if (!ts.isClassDeclaration(s) || !s.name) continue
    const members = new Set()
    for (const m of s.members) {
      if (m.name && !ts.isConstructorDeclaration(m)) members.add(m.name.getText(source))
    }
    classes[s.name.text] = members
  }
  return classes
}

// Public members at run time: prototype chain up to (not including) EventEmitter / Object,
// plus own instance properties of a constructed object.
function runtimeMembers(instance, stopAt) {
  const names = new Set(Object.keys(instance))
  for (let p = Object.getPrototypeOf(instance); p && p !== stopAt; p = Object.getPrototypeOf(p)) {
    for (const n of Object.getOwnPropertyNames(p)) if (n !== 'constructor') names.add(n)
  }
  return names
}

test('every declared member exists at run time, and every public one is declared', () => {
  const { EventEmitter } = require('node:events')
  const sfc = require('..')
  const declared = declaredMembers(path.join(pkgDir, 'index.d.ts'))
  assert.deepEqual(Object.keys(declared).sort(), ['Client', 'Registry'])
  assert.deepEqual(Object.keys(sfc).sort(), ['Client', 'Registry', 'version'])
  const instances = {
    Client: new sfc.Client({ group: 'types', insecurePlaintext: true }),
    Registry: new sfc.Registry({ listen: '127.0.0.1:0' }),
  }
  const eventMethods = new Set(['on', 'once', 'off', 'emit'])
  for (const [name, members] of Object.entries(declared)) {
    const actual = runtimeMembers(instances[name], EventEmitter.prototype)
    const publicActual = [...actual].filter((n) => !n.startsWith('_'))
    for (const m of members) {
      if (eventMethods.has(m)) continue
      // A well-known symbol member, `[Symbol.asyncDispose]`.
      const symbol = /^\[Symbol\.(\w+)\]$/.exec(m)
      if (symbol) {
        assert.equal(typeof instances[name][Symbol[symbol[1]]], 'function', `${name}.${m} is declared but missing at run time`)
        continue
      }
      assert.ok(actual.has(m), `${name}.${m} is declared but missing at run time`)
    }
    for (const m of publicActual) {
      if (EventEmitter.prototype[m] !== undefined || m in {}) continue
      assert.ok(members.has(m), `${name}.${m} exists at run time but is not declared`)
    }
  }

  const compat = declaredMembers(path.join(pkgDir, 'compat.d.ts'))
  const Control = require('../compat')
  const control = new Control({ role: 'tlsService' })
  const actual = runtimeMembers(control, Object.prototype)
  for (const m of compat.Control) assert.ok(actual.has(m), `Control.${m} is declared but missing at run time`)
  for (const m of [...actual].filter((n) => !n.startsWith('_'))) {
    assert.ok(compat.Control.has(m), `Control.${m} exists at run time but is not declared`)
  }
})
