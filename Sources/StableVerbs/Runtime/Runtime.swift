// The process-wide runtime: configuration, the selected lower interface, and the handle tables
// (devices and contexts; each context owns the records of its objects).
//
// Start-up. The C constructor (sv_startup.c) only snapshots the environment and resolves libc's
// dlsym: in the static build it runs before the Swift runtime's own initialisers. The Swift state is
// built by the first intercepted call, inside sv_control_once (pthread_once). Bootstrap calls no
// verb and no lower-interface function that could re-enter the shim (it only resolves the lower
// table), so an intercepted call can never wait on its own initialisation.
//
// Concurrency. Everything reachable from `Runtime.shared` is mutated only under the control lock
// (sv_control_lock, a recursive pthread mutex). The fast path never takes it: it reads the C structs
// of sv_objects.h and the identity maps, which the control path publishes with release stores. Calls
// that may block (ibv_get_cq_event, ibv_get_async_event, the destroy verbs that wait for event
// acknowledgements) run outside the lock.
//
// Fork. One pthread_atfork handler (sv_control.c): fork waits for the control lock to be free and
// the child starts with a fresh one (the shim's threads take it; a child must not inherit it held
// by a thread it does not have). Otherwise a child inherits the virtual objects exactly as it would
// inherit a native library's objects (same memory, same fds); using them in the child is what it
// is natively (ibv_fork_init rules apply; the shim forwards ibv_fork_init to the lower interface).

import CVerbs
import Glibc
import SoftHCA
import StableVerbsABI

final class Runtime {
    // Set once by bootstrap (under pthread_once), read-only afterwards.
    nonisolated(unsafe) static var shared: Runtime?
    // Set by StableVerbs.configure before the first use (tests); read by bootstrap.
    nonisolated(unsafe) static var pending: Configuration?

    let configuration: Configuration
    /// The lower interface (a copy of its table; every slot may be NULL). Zeroed when misconfigured.
    let ops: sv_lower
    /// Entry points of the real libibverbs outside the lower table (zero for the software HCA).
    let extra: sv_lower_extra
    let lowerAvailable: Bool
    /// `sv_lower.name`, or "none" when no lower interface could be selected.
    let lowerName: UnsafePointer<CChar>
    let passthrough: Bool
    /// Why the lower interface is unavailable (logged once at start-up).
    let failure: String?

    // Handle tables (control lock).
    var devices = DeviceTable()
    var contexts: [UInt: ContextRecord] = [:]
    var nextSequence: UInt64 = 0
    /// A UD QP of this process was rebuilt under another real QPN (Identity/UDSenders.swift).
    var udSendersMoved = false
    var udSenderGarbage = UDSenderGarbage()
    /// The recovery engine's state (Recovery/Recovery.swift).
    let recovery = RecoveryState()
    /// The peer protocol (Peers/).
    let peers = PeerRegistry()

    init(configuration: Configuration, lower: UnsafePointer<sv_lower>?, extra: sv_lower_extra, failure: String?) {
        self.configuration = configuration
        self.ops = lower?.pointee ?? sv_lower()
        self.extra = extra
        self.lowerAvailable = lower != nil
        self.lowerName = lower?.pointee.name ?? Runtime.noneName
        self.passthrough = configuration.passthrough
        self.failure = failure
    }

    nonisolated(unsafe) private static let noneName: UnsafePointer<CChar> = {
        let p = strdup("none")!
        return UnsafePointer(p)
    }()

    /// The runtime, built on first use.
    @inline(__always) static var current: Runtime {
        sv_control_once(runtimeBootstrap)
        return shared.unsafelyUnwrapped
    }

    func sequence() -> UInt64 {
        nextSequence &+= 1
        return nextSequence
    }

    static func bootstrap() {
        let configuration = pending ?? Configuration.fromEnvironment()
        Log.open(configuration)
        for problem in configuration.problems { Log.warn(problem) }
        let selection = LowerSelection.select(configuration)
        let runtime = Runtime(configuration: configuration, lower: selection.lower, extra: selection.extra,
                              failure: selection.failure)
        if let failure = selection.failure {
            Log.error("\(failure); verbs calls fail with ENOSYS")
        } else {
            Log.info("active: lower=\(String(cString: runtime.lowerName))\(configuration.passthrough ? " (pass-through)" : "")")
        }
        shared = runtime
    }

    /// The context record behind a virtual context pointer (the caller checked isVirtual).
    func contextRecord(_ c: UnsafeMutablePointer<ibv_context>) -> ContextRecord {
        record(virtualContext(c).pointee.core, as: ContextRecord.self)
    }

    /// Every live context other than `except`, in opening order.
    func orderedContexts() -> [ContextRecord] {
        contexts.values.sorted { $0.sequence < $1.sequence }
    }
}

/// The C entry of the one-time bootstrap (pthread_once wants a C function).
private func runtimeBootstrap() {
    Runtime.bootstrap()
}
