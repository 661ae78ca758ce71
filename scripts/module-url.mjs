// Injected into the CommonJS bundles (scripts/bundle.mjs) for the sources' import.meta.url: the
// URL of the bundle file the code runs from.
import { pathToFileURL } from 'node:url'

// __filename is the bundle's own: its CommonJS wrapper defines it.
export const ublkdModuleUrl = pathToFileURL(__filename).href
