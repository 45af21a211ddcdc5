// A connection one of the applications ends itself (DESIGN §4, peer protocol).
//
// An application ends a connection by moving its QP to the error state (rdma_disconnect does, and
// so do most programs' teardowns), by resetting it or by destroying it. From then on the error
// completions of that QP are the application's own — the flushes it asked for — and reach it as
// they come: they are not held back for STABLEVERBS_PEER_TIMEOUT_MS as a moving peer's would be.
// The peer shim is told (`closed`, signed with the link's key), so that its end, whose errors
// follow (its sends retried towards a QP that is gone, its own teardown's flushes), stops holding
// them too; errors it already held reach its application at once. A peer that is reconnecting
// after a move of its own is answered `closed` and fails the connection instead of waiting.
//
// The notices go from the peer service's asking thread, one exchange per peer process; a process
// that exits right after its teardown gives them up to 500 ms (atexit) to leave.

import CVerbs
import Glibc
import StableVerbsABI

/// The `closed` notices waiting for the asking thread (control lock; `unsent` also read at exit).
struct CloseNotices {
    var queue: [(process: PeerProcess, request: [UInt8], label: String)] = []
    /// Queued and not yet sent (or given up on).
    nonisolated(unsafe) static var unsent = 0
    nonisolated(unsafe) static var ownerPID: pid_t = 0
}

extension Runtime {
    /// The application moved `rec` to the error state itself: the connection is over. Control lock.
    func applicationEndedConnection(_ rec: QPRecord) {
        guard let link = link(of: rec), link.state == .ready || link.state == .awaiting || link.state == .introducing else { return }
        noticeClosed(link)
        if link.suspectSince != nil {
            // Errors were held back for a peer that might be moving: they reach the application now
            // (completions the real CQ still returns for the same work are dropped as duplicates).
            failLink(link, status: link.heldStatus)
        }
        link.state = .closed
        Log.info("peer: \(link.label): the application moved its QP to the error state: the connection ends, its errors reach it as they come")
    }

    /// Queues the `closed` notice of `link` for its peer shim, when the peer knows the link.
    /// Control lock.
    func noticeClosed(_ link: PeerLink) {
        guard link.state == .ready || link.state == .awaiting, let host = link.host, !link.key.isEmpty else { return }
        var m = PeerMessage("closed")
        m["from_qpn"] = String(link.qp.virtualQPN)
        m["to_qpn"] = String(link.remoteQPN)
        m["to_gid"] = gidHex(link.remoteGID)
        peers.closing.queue.append((PeerProcess(host: host, port: link.servicePort), m.encoded(key: link.key), link.label))
        CloseNotices.unsent += 1
        wakePeerService()
    }

    /// Sends the queued notices (the asking thread; no lock held on entry).
    func sendCloseNotices() {
        let notices = withControlLock {
            defer { peers.closing.queue.removeAll() }
            return peers.closing.queue
        }
        for (process, batch) in groupedByProcess(notices, { $0.process }) {
            if let host = process.host {
                let answers = PeerSocket.exchangeParts(host: host, port: process.port, requests: batch.map(\.request),
                                                       timeoutMS: 500 + 10 * Int32(min(batch.count, 100)))
                for (n, d) in zip(batch, answers) {
                    Log.debug("peer: \(n.label): `closed` answered \(d.map { "`\($0.message.verb)`" } ?? "nothing")")
                }
            }
            withControlLock { CloseNotices.unsent -= batch.count }
        }
    }

    /// The atexit handler: the notices of a teardown just done get up to 500 ms to leave. (Read
    /// without the lock: the thread that exits might hold it.)
    static func waitForCloseNotices() {
        guard CloseNotices.ownerPID == getpid() else { return }
        let deadline = monotonicNS() &+ 500_000_000
        while CloseNotices.unsent > 0 && monotonicNS() < deadline { usleep(1_000) }
    }

    /// A peer's application ended a connection (service thread).
    func answerClosed(_ d: DecodedPeerMessage) -> [UInt8] {
        let m = d.message
        guard let toQPN = m.number("to_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let fromQPN = m.number("from_qpn").map({ UInt32(truncatingIfNeeded: $0) }),
              let toGID = m["to_gid"].flatMap(gidFromHex) else {
            return PeerMessage("error").encoded(key: nil)
        }
        return withControlLock {
            guard let q = localQP(qpn: toQPN, gid: toGID), let link = peers.links[key(q.ptr)],
                  link.remoteQPN == fromQPN, PeerMessage.verify(d, key: link.key) else {
                return PeerMessage("denied").encoded(key: nil)
            }
            if link.state == .ready || link.state == .awaiting {
                Log.info("peer: \(link.label): the peer's application ended the connection: this end's errors reach the application as they come")
                // Held errors, or a reconnection under way towards an end that is gone: the
                // connection fails as it would natively.
                if link.suspectSince != nil || link.state == .awaiting { failLink(link, status: link.heldStatus) }
                link.state = .closed
            }
            return PeerMessage("ok").encoded(key: link.key)
        }
    }
}
