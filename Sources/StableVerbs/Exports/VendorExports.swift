// The Swift side of the vendor direct-verbs refusals (Sources/StableVerbsABI/sv_vendor.c).

@_cdecl("sv_report_unsupported")
func reportUnsupported(_ verb: UnsafePointer<CChar>) {
    Log.unsupported(String(cString: verb))
}
