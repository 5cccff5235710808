#!/usr/bin/env node
// Makes the two npm packages of a release, for the build machine's platform, the way napi-rs
// lays out packages with prebuilt binaries (`napi create-npm-dirs` / `napi prepublish`):
//
//   <out>/service-fleet-control-<version>.tgz                 JavaScript, types, LICENSE, README;
//        no binary. `optionalDependencies` names the platform package(s) at the same version.
//   <out>/service-fleet-control-<platform>-<version>.tgz      the stripped release addons,
//        sfc.<platform>.node (the client, `main`) and sfc-registry.<platform>.node (the
//        embedded registry), with `os` / `cpu` / `libc` so that npm installs it only there.
//
// The loaders (native.js, native-registry.js) look for an addon next to themselves first, then
// in the platform package; lib/binding.js turns "no addon" into a message that names the
// platform and says how to build from source.
//
//   node scripts/pack.js [--out DIR] [--no-build]
//
// Without --no-build it first runs `build-native.js --release --check`: a release build,
// stripped, whose loaders and type
// definitions must equal the committed ones. The version must be the workspace's
// (`[workspace.package] version` in the root Cargo.toml): package.json's is checked, not
// rewritten. The main package bundles its one runtime dependency (`debug`, and `ms` under it),
// so that installing the two tarballs needs no registry. The packed platform package must stay
// within its size budget (9 MB, see BENCHMARKS.md: 8 MB until the embedded Registry gained its
// HTTP API and /metrics, which put it at 8.4 MB).
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const path = require('node:path')

const pkgDir = path.resolve(__dirname, '..')
const repoRoot = path.resolve(pkgDir, '..', '..')
const PLATFORM_BUDGET = 9 * 1000 * 1000

const args = process.argv.slice(2)
const outAt = args.indexOf('--out')
const outDir = path.resolve(outAt >= 0 ? args[outAt + 1] : path.join(repoRoot, 'dist', 'npm'))
const build = !args.includes('--no-build')

function fail(msg) {
  console.error(`pack.js: ${msg}`)
  process.exit(1)
}

// `[workspace.package] version` of the root Cargo.toml.
function workspaceVersion() {
  const toml = fs.readFileSync(path.join(repoRoot, 'Cargo.toml'), 'utf8')
  const section = /^\[workspace\.package\]\s*$([\s\S]*?)(?=^\[|(?![\s\S]))/m.exec(toml)
  const m = section && /^version\s*=\s*"([^"]+)"/m.exec(section[1])
  if (!m) fail('no [workspace.package] version in Cargo.toml')
  return m[1]
}

// napi-rs's suffix for this machine (as build-native.js and the loaders name the addons), and
// the package.json fields `napi create-npm-dirs` gives its package.
function platform() {
  const arch = process.arch
  switch (process.platform) {
    case 'linux': {
      const musl = !process.report?.getReport()?.header?.glibcVersionRuntime
      return { name: `linux-${arch}-${musl ? 'musl' : 'gnu'}`, os: ['linux'], cpu: [arch], libc: [musl ? 'musl' : 'glibc'] }
    }
    case 'darwin':
      return { name: `darwin-${arch}`, os: ['darwin'], cpu: [arch] }
    case 'win32':
      return { name: `win32-${arch}-msvc`, os: ['win32'], cpu: [arch] }
    default:
      return fail(`no napi-rs platform name for ${process.platform}-${arch}`)
  }
}

function copy(from, to) {
  fs.mkdirSync(path.dirname(to), { recursive: true })
  fs.cpSync(from, to, { recursive: true, dereference: true })
}

// Copies a runtime dependency and, recursively, its own dependencies from this package's
// node_modules into `stage/node_modules` (flat, as npm installed them here).
function bundle(name, stage, seen = new Set()) {
  if (seen.has(name)) return seen
  seen.add(name)
  const from = path.join(pkgDir, 'node_modules', name)
  if (!fs.existsSync(path.join(from, 'package.json'))) fail(`${name} is not installed in bindings/node/node_modules: run npm ci there`)
  copy(from, path.join(stage, 'node_modules', name))
  const meta = JSON.parse(fs.readFileSync(path.join(from, 'package.json'), 'utf8'))
  for (const dep of Object.keys(meta.dependencies || {})) bundle(dep, stage, seen)
  return seen
}

function npmPack(stage) {
  const out = execFileSync('npm', ['pack', '--json', '--loglevel', 'warn', '--pack-destination', outDir], { cwd: stage, maxBuffer: 64 << 20 })
  const [info] = JSON.parse(out.toString())
  return { file: path.join(outDir, info.filename), size: info.size, unpackedSize: info.unpackedSize, entries: info.entryCount }
}

function mb(n) {
  return `${(n / 1e6).toFixed(2)} MB`
}

function main() {
  const version = workspaceVersion()
  const pkg = JSON.parse(fs.readFileSync(path.join(pkgDir, 'package.json'), 'utf8'))
  if (pkg.version !== version) {
    fail(`bindings/node/package.json has version ${pkg.version}, the workspace (Cargo.toml) ${version}: set "version": "${version}" in package.json and package-lock.json, then run npm run build:debug to regenerate the loaders`)
  }
  const plat = platform()
  const binaries = [`sfc.${plat.name}.node`, `sfc-registry.${plat.name}.node`]

  if (build) {
    execFileSync(process.execPath, [path.join(__dirname, 'build-native.js'), '--release', '--check'], { cwd: pkgDir, stdio: 'inherit' })
  }
  for (const b of binaries) {
    const file = path.join(pkgDir, b)
    if (!fs.existsSync(file)) fail(`${b} is missing: run without --no-build`)
    // A debug build left there (npm test, build:debug) must not be packed.
    if (process.platform === 'linux' && /\.debug_info|\.symtab/.test(execFileSync('readelf', ['-S', '-W', file]).toString())) {
      fail(`${b} is not a stripped release build: run without --no-build`)
    }
  }
  // The loaders name the platform package's version they accept: it must be this one.
  for (const loader of ['native.js', 'native-registry.js']) {
    const text = fs.readFileSync(path.join(pkgDir, loader), 'utf8')
    const expected = new Set([...text.matchAll(/expected ([0-9][^ ]*) but got/g)].map((m) => m[1]))
    if (expected.size !== 1 || !expected.has(version)) fail(`${loader} expects platform packages at version ${[...expected]}, not ${version}: run npm run build:debug`)
  }

  const stageRoot = path.join(outDir, '.stage')
  fs.rmSync(stageRoot, { recursive: true, force: true })
  fs.mkdirSync(outDir, { recursive: true })
  const platformPackage = `${pkg.name}-${plat.name}`
  for (const f of fs.readdirSync(outDir)) {
    if (f.endsWith('.tgz') && (f.startsWith(`${pkg.name}-${version}`) || f.startsWith(`${platformPackage}-`))) fs.rmSync(path.join(outDir, f))
  }
  const common = {
    description: pkg.description,
    license: pkg.license,
    engines: pkg.engines,
  }

  // The platform package: both addons, `main` the client's, as napi-rs's platform packages.
  const platStage = path.join(stageRoot, 'platform')
  fs.mkdirSync(platStage, { recursive: true })
  for (const b of binaries) copy(path.join(pkgDir, b), path.join(platStage, b))
  copy(path.join(repoRoot, 'LICENSE'), path.join(platStage, 'LICENSE'))
  const platJson = {
    name: platformPackage,
    version,
    ...common,
    description: `The ${plat.name} native addons of ${pkg.name}: the client (main) and the embedded registry`,
    os: plat.os,
    cpu: plat.cpu,
    ...(plat.libc ? { libc: plat.libc } : {}),
    main: binaries[0],
    files: binaries,
  }
  fs.writeFileSync(path.join(platStage, 'package.json'), JSON.stringify(platJson, null, 2) + '\n')
  fs.writeFileSync(
    path.join(platStage, 'README.md'),
    `# ${platformPackage}\n\nThe prebuilt native addons of [\`${pkg.name}\`](https://www.npmjs.com/package/${pkg.name}) for ${plat.name}:\n` +
      `\`${binaries[0]}\` (the client) and \`${binaries[1]}\` (the embedded registry, loaded by the first \`Registry\`).\n` +
      `Install \`${pkg.name}\`, not this package: npm picks it as an optional dependency on this platform.\n`,
  )

  // The main package: JavaScript and types, no binary; names the platform package.
  const mainStage = path.join(stageRoot, 'main')
  fs.mkdirSync(mainStage, { recursive: true })
  const files = pkg.files.filter((f) => !f.endsWith('.node'))
  for (const f of files) copy(path.join(pkgDir, f), path.join(mainStage, f))
  copy(path.join(repoRoot, 'LICENSE'), path.join(mainStage, 'LICENSE'))
  copy(path.join(pkgDir, 'README.md'), path.join(mainStage, 'README.md'))
  const bundled = [...Object.keys(pkg.dependencies || {})]
  for (const dep of bundled) bundle(dep, mainStage)
  const mainJson = {
    name: pkg.name,
    version,
    ...common,
    main: pkg.main,
    types: pkg.types,
    exports: pkg.exports,
    files,
    engines: pkg.engines,
    dependencies: pkg.dependencies,
    // The types name Node.js's (`node:events`, AbortSignal): TypeScript users have @types/node.
    peerDependencies: pkg.peerDependencies,
    peerDependenciesMeta: pkg.peerDependenciesMeta,
    bundleDependencies: bundled,
    optionalDependencies: { [platformPackage]: version },
  }
  fs.writeFileSync(path.join(mainStage, 'package.json'), JSON.stringify(mainJson, null, 2) + '\n')

  const packed = { main: npmPack(mainStage), platform: npmPack(platStage) }
  fs.rmSync(stageRoot, { recursive: true, force: true })
  for (const [what, p] of Object.entries(packed)) {
    console.log(`${path.relative(process.cwd(), p.file)}: ${mb(p.size)} packed, ${mb(p.unpackedSize)} unpacked, ${p.entries} files (${what})`)
  }
  if (packed.platform.size > PLATFORM_BUDGET) fail(`the platform package is ${mb(packed.platform.size)} packed, over its ${mb(PLATFORM_BUDGET)} budget`)
}

main()
