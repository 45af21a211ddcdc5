import CVerbs
import Glibc
import StableVerbsABI

/// The software HCA test double: an in-process implementation of the lower interface
/// (`struct sv_lower`) whose objects are genuine rdma-core 44 structures with their op pointers set
/// like a provider's, so the inline `ibv_post_send`, `ibv_poll_cq`, `ibv_query_port`,
/// `ibv_create_qp_ex`, `ibv_wr_*` … work on them.
///
/// Devices live in one in-process fabric (routing by LID and GID across every device and port);
/// transfers run synchronously inside `post_send`. An RC send that finds no receive waits at the
/// responder until one is posted (infinite RNR retry). Every entry point can be made to fail, and
/// devices can vanish and return (see `Configuration` for the `STABLEVERBS_SOFTHCA` syntax).
public enum SoftHCA {
    /// Resets the fabric to `configuration` (every device and object of the previous one is gone;
    /// QPNs and keys stay fresh) and returns the table.
    public static func lower(configuration: Configuration) -> UnsafePointer<sv_lower> {
        fabric.lock.with { fabric.reset(to: configuration) }
        return UnsafePointer(softLowerTable)
    }

    /// The table, configured from `STABLEVERBS_SOFTHCA` (or the defaults) on first use; does not reset.
    public static var shared: UnsafePointer<sv_lower> {
        fabric.lock.with { fabric.ensureConfigured() }
        return UnsafePointer(softLowerTable)
    }

    /// Same as `lower(configuration:)`, from the `STABLEVERBS_SOFTHCA` syntax.
    public static func lower(configurationString: String) throws(ConfigurationError) -> UnsafePointer<sv_lower> {
        lower(configuration: try Configuration(parsing: configurationString))
    }

    /// The configuration in force.
    public static var configuration: Configuration {
        fabric.lock.with { fabric.ensureConfigured(); return fabric.configuration }
    }

    // MARK: faults

    /// Makes the next `count` calls (nil: all) of `entry` fail with `errno` after `skip` calls went
    /// through; on `device` only if given. For `completion_error` the value is an `ibv_wc_status`.
    public static func inject(_ fault: Fault) {
        fabric.lock.with { fabric.ensureConfigured(); fabric.faults.add(fault) }
    }

    public static func failNext(_ entry: String, errno value: Int32, count: Int? = 1, skip: Int = 0, device: String? = nil) {
        inject(Fault(entry: entry, value: value, count: count, skip: skip, device: device))
    }

    /// The next `count` send WRs executed (on `device` if given) complete with `status`; their QP
    /// enters the error state and its later work is flushed, like a hardware error completion.
    public static func failCompletions(status: ibv_wc_status, count: Int? = 1, skip: Int = 0, device: String? = nil) {
        inject(Fault(entry: "completion_error", value: Int32(status.rawValue), count: count, skip: skip, device: device))
    }

    /// The call of `entry` after `skip` more (on `device` if given) makes its device vanish like
    /// `removeDevice(_:.fatal)` and fails with EIO: the device lost again while a rebuild runs.
    public static func removeDeviceIn(_ entry: String, skip: Int = 0, device: String? = nil) {
        inject(Fault(entry: entry, value: EIO, count: 1, skip: skip, device: device, removesDevice: true))
    }

    /// Whether a device of that name is in `get_device_list` now.
    public static func isPresent(_ name: String) -> Bool {
        locked { fabric.devices.contains { $0.name == name && $0.present } }
    }

    public static func clearFaults() {
        fabric.lock.with { fabric.faults.removeAll() }
    }

    /// Faults not yet consumed.
    public static var pendingFaults: [Fault] {
        fabric.lock.with { fabric.faults.rules }
    }

    // MARK: devices

    /// How a device goes away.
    public enum Removal: Sendable {
        /// Like mlx5 with disassociate: IBV_EVENT_DEVICE_FATAL on every open context's async fd,
        /// every QP enters the error state (outstanding work completes with IBV_WC_WR_FLUSH_ERR,
        /// still pollable), every later command on its objects fails with EIO, and destroying them
        /// fails with EIO unless `allowDisassociatedDestroy`. Peers' RC QPs fail with retry errors.
        case fatal
        /// `fatal`, and the hardware died before it wrote the completions of one kind that had
        /// not been polled yet (`sends`: a requester's — the messages were delivered, the
        /// acknowledgements never reached it; else a responder's receives — the data landed, the
        /// sender saw it acknowledged): they are gone, not flushed.
        case fatalLosingCompletions(sends: Bool)
        /// Like rxe (no disassociate): the device leaves the device list and its ports go down
        /// (IBV_EVENT_PORT_ERR if `portEvent`), but its objects stay usable locally; the removal
        /// completes when every context on it is closed (`removalPending`).
        case waitForClose(portEvent: Bool)
    }

    /// Names of the devices in `get_device_list` right now.
    public static var deviceNames: [String] {
        fabric.lock.with { fabric.ensureConfigured(); return fabric.devices.filter { $0.present }.map { $0.name } }
    }

    /// Makes a device vanish. Returns false if no present device has that name.
    @discardableResult
    public static func removeDevice(_ name: String, _ how: Removal = .fatal) -> Bool {
        locked {
            guard let d = fabric.devices.first(where: { $0.name == name && $0.present }) else { return false }
            fabric.remove(d, how)
            return true
        }
    }

    /// True while a `.waitForClose` removal waits for contexts to be closed.
    public static func removalPending(_ name: String) -> Bool {
        locked { fabric.devices.first(where: { $0.name == name })?.removalPending ?? false }
    }

    /// Brings a vanished device back: present in `get_device_list` again (a new `ibv_device`
    /// pointer and device index), openable. With `newIdentity` it has a new node GUID, port LIDs,
    /// GIDs and IP (a new VF); `newName` renames it. Old contexts stay dead.
    @discardableResult
    public static func restoreDevice(_ name: String, newIdentity: Bool = false, newName: String? = nil) -> Bool {
        locked {
            guard let d = fabric.devices.first(where: { $0.name == name && !$0.present }) else { return false }
            if let newName { d.name = newName }
            if newIdentity { d.assignIdentity(fabric: fabric) }
            for p in d.ports { p.state = IBV_PORT_ACTIVE }
            d.removalPending = false
            d.present = true
            d.newIncarnation(fabric: fabric)
            return true
        }
    }

    /// Takes a port down or up, queueing IBV_EVENT_PORT_ERR / IBV_EVENT_PORT_ACTIVE on every open
    /// context of the device. Traffic through a down port fails (RC: retry exceeded).
    @discardableResult
    public static func setPort(_ name: String, port: UInt8 = 1, active: Bool) -> Bool {
        locked {
            guard let d = fabric.devices.first(where: { $0.name == name }), let p = d.port(port) else { return false }
            let was = p.isActive
            p.state = active ? IBV_PORT_ACTIVE : IBV_PORT_DOWN
            if was != active {
                for c in fabric.contexts.values where c.device === d && !c.dead {
                    c.postPortEvent(active ? IBV_EVENT_PORT_ACTIVE : IBV_EVENT_PORT_ERR, port: port)
                }
                if !active {
                    for qp in fabric.qps.values where qp.context.device === d && qp.attr.port_num == port { qp.failWaitingRequesters() }
                }
            }
            return true
        }
    }

    /// The identities of a device's port, as a peer would see them.
    public struct PortIdentity: Sendable, Equatable {
        public var device: String
        public var port: UInt8
        public var nodeGUID: UInt64
        public var portGUID: UInt64
        public var lid: UInt16
        /// GID table entries in index order, each 16 bytes.
        public var gids: [[UInt8]]
        public var deviceIndex: Int32
        public var present: Bool
    }

    public static func identity(of name: String, port: UInt8 = 1) -> PortIdentity? {
        locked {
            guard let d = fabric.devices.first(where: { $0.name == name }), let p = d.port(port) else { return nil }
            return PortIdentity(device: d.name, port: port, nodeGUID: d.nodeGUID, portGUID: p.guid, lid: p.lid,
                                gids: p.gids.sorted { $0.index < $1.index }.map { $0.gid.bytes }, deviceIndex: d.index, present: d.present)
        }
    }

    // MARK: introspection

    /// Live object counts ("contexts", "pds", "mrs", "channels", "cqs", "qps", "srqs", "ahs"):
    /// lets tests check that nothing leaked.
    public static var liveObjects: [String: Int] {
        locked {
            ["contexts": fabric.contexts.count, "pds": fabric.pds.count, "mrs": fabric.mrs.count,
             "channels": fabric.channels.count, "cqs": fabric.cqs.count, "qps": fabric.qps.count,
             "srqs": fabric.srqs.count, "ahs": fabric.ahs.count]
        }
    }

    /// Whether a pointer is an object of the double (any kind), e.g. to tell real from virtual.
    public static func owns(_ pointer: UnsafeRawPointer) -> Bool {
        let k = UnsafeMutableRawPointer(mutating: pointer)
        return locked {
            fabric.contexts[k] != nil || fabric.pds[k] != nil || fabric.mrs[k] != nil || fabric.channels[k] != nil ||
                fabric.cqs[k] != nil || fabric.qps[k] != nil || fabric.srqs[k] != nil || fabric.ahs[k] != nil ||
                fabric.incarnations[k] != nil
        }
    }

    /// The work requests a QP has posted that have not completed yet (sends waiting at a responder
    /// or held in SQD, and receives), by QP number.
    public static func outstanding(qpNumber: UInt32) -> (sends: Int, receives: Int)? {
        locked {
            guard let qp = fabric.qpByNumber[qpNumber] else { return nil }
            return (qp.sendQueueDepth, qp.recvQueue.count)
        }
    }
}
