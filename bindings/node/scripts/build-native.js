#!/usr/bin/env node
// Builds the two native addons with plain `cargo build -p sfc-node -p sfc-node-registry` in the
// workspace's own target directory: the client (`sfc.<platform>.node`, loaded by `native.js`)
// and the embedded registry (`sfc-registry.<platform>.node`, loaded by `native-registry.js` when
// a `Registry` is first created). Copies each next to its loader and renders the napi-rs loaders
// and type definitions (`native.d.ts`, `native-registry.d.ts`) from the build's type
// information, with @napi-rs/cli's own generators.
//
//   node scripts/build-native.js [--release | --profile NAME] --write   regenerate the loaders and .d.ts files
//   node scripts/build-native.js [--release | --profile NAME] --check   fail if the committed ones differ
//
// A release build (`--release`, or another `--profile`) is stripped (`strip --strip-unneeded`):
// that is what the npm platform package carries (scripts/pack.js builds it with
// `--release --check`).
//
// Both addons ship in one platform package (`service-fleet-control-<platform>`, whose `main` is
// the client addon), while @napi-rs/cli generates each loader for a platform package of its
// own: `registryFromPlatformPackage` points the registry loader at its file inside that package.
//
// SFC_NODE_CARGO_ARGS (default `-p sfc-node -p sfc-node-registry`) replaces the package selection, so that a caller
// that builds the whole workspace (the root Makefile) can reuse that build: cargo rebuilds the
// dependencies whenever the selected packages unify to other features.
'use strict'

const { execFileSync } = require('node:child_process')
const fs = require('node:fs')
const os = require('node:os')
const path = require('node:path')

const pkgDir = path.resolve(__dirname, '..')
const repoRoot = path.resolve(pkgDir, '..', '..')
const profileAt = process.argv.indexOf('--profile')
const profile = profileAt >= 0 ? process.argv[profileAt + 1] : process.argv.includes('--release') ? 'release' : 'dev'
const release = profile !== 'dev'
const check = process.argv.includes('--check')
const write = process.argv.includes('--write')
if (check === write || !profile || profile.startsWith('-')) {
  console.error('usage: build-native.js [--release | --profile NAME] (--check | --write)')
  process.exit(2)
}
// cargo's output directory of a profile.
const profileDir = { dev: 'debug', release: 'release' }[profile] ?? profile

// The suffix napi-rs gives a platform's binary (its loader looks for exactly these names).
function platformSuffix() {
  const arch = { x64: 'x64', arm64: 'arm64', ia32: 'ia32', arm: 'arm' }[process.arch] ?? process.arch
  switch (process.platform) {
    case 'linux': {
      const musl = !process.report?.getReport()?.header?.glibcVersionRuntime
      return `linux-${arch}-${musl ? 'musl' : 'gnu'}`
    }
    case 'darwin':
      return `darwin-${arch}`
    case 'win32':
      return `win32-${arch}-msvc`
    default:
      return `${process.platform}-${arch}`
  }
}

// The file cargo writes for the cdylib of `crate` (a package name with `-` turned into `_`).
function libraryName(crate) {
  switch (process.platform) {
    case 'darwin':
      return `lib${crate}.dylib`
    case 'win32':
      return `${crate}.dll`
    default:
      return `lib${crate}.so`
  }
}

// The two addons: cargo package, file stem of the .node binary, and the loader's name.
const ADDONS = [
  { pkg: 'sfc-node', binaryName: 'sfc', loader: 'native' },
  { pkg: 'sfc-node-registry', binaryName: 'sfc-registry', loader: 'native-registry' },
]

// The registry addon is not its platform package's `main` (the client addon is): its loader
// requires the file inside the package, `service-fleet-control-<platform>/sfc-registry.<platform>.node`.
// Only the native packages' `const binding = require(...)` lines change; the version checks
// still read `<package>/package.json`.
function registryFromPlatformPackage(text, packageName, binaryName) {
  const escaped = packageName.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')
  const re = new RegExp(`(const binding = require\\(')(${escaped}-([a-z0-9-]+))('\\))`, 'g')
  return text.replace(re, (_, open, pkg, platform, close) => `${open}${pkg}/${binaryName}.${platform}.node${close}`)
}

function targetDir() {
  const out = execFileSync('cargo', ['metadata', '--format-version', '1', '--no-deps'], { cwd: repoRoot, maxBuffer: 64 << 20 })
  return JSON.parse(out.toString()).target_directory
}

async function main() {
  const { generateTypeDef, writeJsBinding } = await import('@napi-rs/cli')
  const pkg = require(path.join(pkgDir, 'package.json'))
  const work = fs.mkdtempSync(path.join(os.tmpdir(), 'sfc-node-build-'))
  const typeDefDir = path.join(work, 'typedef')
  fs.mkdirSync(typeDefDir)
  try {
    const select = (process.env.SFC_NODE_CARGO_ARGS || '-p sfc-node -p sfc-node-registry').split(/\s+/).filter(Boolean)
    const args = ['build', ...select]
    if (profile !== 'dev') args.push('--profile', profile)
    execFileSync('cargo', args, {
      cwd: repoRoot,
      stdio: 'inherit',
      env: {
        ...process.env,
        NAPI_TYPE_DEF_TMP_FOLDER: typeDefDir,
        NAPI_FORCE_BUILD_SFC_NODE: String(Date.now()),
        NAPI_FORCE_BUILD_SFC_NODE_REGISTRY: String(Date.now()),
      },
    })
    const fresh = {}
    for (const addon of ADDONS) {
      const lib = path.join(targetDir(), profileDir, libraryName(addon.pkg.replace(/-/g, '_')))
      const binary = `${addon.binaryName}.${platformSuffix()}.node`
      // Copied beside and renamed into place: a Node.js process that has the previous addon
      // mapped (a test run) keeps its file instead of crashing (SIGBUS) on a rewritten one.
      const staged = path.join(pkgDir, `.${binary}.${process.pid}.tmp`)
      fs.copyFileSync(lib, staged)
      if (release && process.platform !== 'win32') execFileSync('strip', ['--strip-unneeded', staged])
      fs.renameSync(staged, path.join(pkgDir, binary))
      console.log(`copied ${lib} to ${binary}${release ? ' (stripped)' : ''}`)
      // napi-derive writes one type-information file per package: give each addon its own.
      const own = path.join(work, `typedef-${addon.pkg}`)
      fs.mkdirSync(own)
      fs.copyFileSync(path.join(typeDefDir, addon.pkg), path.join(own, addon.pkg))
      const { exports, dts } = await generateTypeDef({ typeDefDir: own, cwd: pkgDir, declareBindingTarget: true })
      await writeJsBinding({
        platform: true,
        binaryName: addon.binaryName,
        packageName: pkg.name,
        version: pkg.version,
        idents: exports,
        outputDir: work,
        jsBinding: `${addon.loader}.js`,
      })
      fresh[`${addon.loader}.d.ts`] = dts
      let loader = fs.readFileSync(path.join(work, `${addon.loader}.js`), 'utf8')
      if (addon.loader === 'native-registry') loader = registryFromPlatformPackage(loader, pkg.name, addon.binaryName)
      fresh[`${addon.loader}.js`] = loader
    }
    let stale = 0
    for (const [name, text] of Object.entries(fresh)) {
      const file = path.join(pkgDir, name)
      const committed = fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : null
      if (committed === text) continue
      if (write) {
        fs.writeFileSync(file, text)
        console.log(`wrote ${name}`)
      } else {
        stale++
        fs.writeFileSync(path.join(pkgDir, `${name}.fresh`), text)
        console.error(`${name} differs from a fresh build (fresh copy: ${name}.fresh); run npm run build:debug and commit it`)
      }
    }
    if (stale) process.exit(1)
    if (check) console.log(`${Object.keys(fresh).join(', ')} match the fresh build`)
  } finally {
    fs.rmSync(work, { recursive: true, force: true })
  }
}

main().catch((e) => {
  console.error(e)
  process.exit(1)
})
