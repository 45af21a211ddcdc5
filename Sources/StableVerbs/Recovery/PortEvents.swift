// Port events around a loss and a move (DESIGN §4: async events for the application only when
// native verbs would have sent one).
//
// A device's ports also speak when it is lost or moved: the NIC under rxe goes (GID table change,
// port error) just before the device leaves the list; the device a move opens comes up after the
// rebuild (port active, GID table filled). The application's port never went down and its GIDs
// never changed (the shim shows the ones it had), so none of these is its own:
// - port events (EventKind.port) are held for STABLEVERBS_EVENT_GRACE_MS and dropped when the
//   context is moving by then (a recovery triggered, or its device gone from the list) or moved
//   meanwhile (another generation);
// - after a move, PORT_ACTIVE is shown only for a port the application saw go down, and the GID,
//   LID, P_Key, SM and re-register events of the new device settling (within STABLEVERBS_SETTLE_MS
//   of the move) are dropped.

import CVerbs
import Glibc
import StableVerbsABI

/// A port event read from the device, waiting for its grace to end (control lock).
struct HeldPortEvent {
    let context: UInt
    /// Already acknowledged on the real context (port events name no object).
    let event: ibv_async_event
    let due: UInt64
    let generation: UInt32
}

extension Runtime {
    /// Port events of a device that has just come up under a moved context.
    static let settlingEvents: Set<ibv_event_type> = [
        IBV_EVENT_GID_CHANGE, IBV_EVENT_LID_CHANGE, IBV_EVENT_PKEY_CHANGE, IBV_EVENT_SM_CHANGE, IBV_EVENT_CLIENT_REREGISTER,
    ]

    /// A port event read from `c`'s device while it is LIVE (control lock): acknowledged, then held
    /// or dropped.
    func holdPortEvent(_ c: ContextRecord, _ event: ibv_async_event) {
        var real = event
        ops.ack_async_event?(&real)
        let type = event.event_type
        let port = UInt8(truncatingIfNeeded: event.element.port_num)
        if c.ptr.pointee.generation > 0 {
            if type == IBV_EVENT_PORT_ACTIVE && !c.portsShownDown.contains(port) {
                Log.debug("\(c.currentDeviceName): port \(port) active after the move (its loss was not shown): not shown")
                return
            }
            if Runtime.settlingEvents.contains(type) && monotonicNS() &- c.movedAt < recovery.settleNS {
                Log.debug("\(c.currentDeviceName): async event \(type.rawValue) of the device settling after the move: not shown")
                return
            }
        }
        recovery.heldPortEvents.append(HeldPortEvent(context: key(c.ptr), event: event, due: monotonicNS() &+ recovery.eventGraceNS,
                                                     generation: c.ptr.pointee.generation))
    }

    /// Shows the held port events whose grace ended, of contexts that neither moved nor are moving
    /// (control lock). Returns when the next one is due.
    func showDuePortEvents() -> UInt64? {
        guard !recovery.heldPortEvents.isEmpty else { return nil }
        let now = monotonicNS()
        var next: UInt64? = nil
        var keep: [HeldPortEvent] = []
        for h in recovery.heldPortEvents {
            guard h.due <= now else {
                keep.append(h)
                next = min(next ?? h.due, h.due)
                continue
            }
            guard let c = contexts[h.context], !c.released else { continue }
            let moving = isMoving(c) || c.ptr.pointee.generation != h.generation
            if moving || deviceVanished(c) {
                Log.debug("\(c.currentDeviceName): async event \(h.event.event_type.rawValue) came with the device's loss: not shown")
                if !moving { trigger(c) }
                continue
            }
            let port = UInt8(truncatingIfNeeded: h.event.element.port_num)
            if h.event.event_type == IBV_EVENT_PORT_ERR { c.portsShownDown.insert(port) }
            if h.event.event_type == IBV_EVENT_PORT_ACTIVE { c.portsShownDown.remove(port) }
            deliverToApplication(c, h.event)
        }
        recovery.heldPortEvents = keep
        return next
    }
}
