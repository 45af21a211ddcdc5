// The peer service: a TCP listener per shimmed process (the first free port of STABLEVERBS_PEER_PORT
// ... +STABLEVERBS_PEER_PORTS-1, every address) and the thread that serves it. The thread also
// introduces new links and gives up on peers that stay away longer than STABLEVERBS_PEER_TIMEOUT_MS
// (their connections end in the error completions the application would see natively).
//
// Requests:  hello  (PeerLinks.swift: who owns this QPN?)        → owner | not-mine
//            moved  (Reconnect.swift: my end of our link moved)   → reconnected | busy | collide | closed | denied
//            pausing (Reconnect.swift: a planned detach begins)   → paused
//            closed (LinkClosing.swift: my application ended it)  → ok | denied
//            words  (ExecutedWork.swift: the words my atomics
//                    target in your memory, while yours is moving) → words | busy | denied
//            ud-pausing (UDPeers.swift: my UD QPs are moving)      → holding | denied
//            ud-moved (UDPeers.swift: my UD QPs are now these,
//                      and my GIDs at these addresses)            → noted | denied
//            ud-hello (UDAddresses.swift: my commitment for my GIDs) → noted | denied

import CVerbs
import Glibc
import StableVerbsABI

extension Runtime {
    /// Starts the service with the first context (control lock held).
    func startPeerService() {
        guard peers.enabled, !peers.serviceStarted else { return }
        peers.serviceStarted = true
        CloseNotices.ownerPID = getpid()
        atexit { Runtime.waitForCloseNotices() }
        peers.wakeFD = sv_eventfd(0, 1)
        for port in peers.portRange {
            let fd = socket(AF_INET6, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { break }
            var zero: Int32 = 0, one: Int32 = 1
            _ = setsockopt(fd, Int32(IPPROTO_IPV6), IPV6_V6ONLY, &zero, socklen_t(MemoryLayout<Int32>.size))
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var sa = sockaddr_in6()
            sa.sin6_family = sa_family_t(AF_INET6)
            sa.sin6_port = port.bigEndian
            let rc = withUnsafePointer(to: &sa) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
            if rc == 0 && listen(fd, 64) == 0 {
                peers.listenFD = fd
                peers.port = port
                break
            }
            close(fd)
        }
        if peers.listenFD < 0 {
            Log.warn("peer: no free port in \(peers.basePort)...\(peers.basePort &+ peers.portCount &- 1) (STABLEVERBS_PEER_PORT, STABLEVERBS_PEER_PORTS): connections of this process to other processes do not survive a move")
        } else {
            Log.debug("peer: service listening on port \(peers.port)")
        }
        // Two threads: one answers requests, the other makes them (introductions), so that two
        // shims introducing themselves to each other at once never wait on each other.
        for body in [0, 1] {
            var thread = pthread_t()
            let rc = pthread_create(&thread, nil, { arg in
                let rt = Runtime.shared.unsafelyUnwrapped
                if arg == nil { rt.servePeers() } else { rt.runPeerChores() }
                return nil
            }, body == 0 ? nil : UnsafeMutableRawPointer(bitPattern: 1))
            if rc == 0 { pthread_detach(thread) } else { Log.error("peer: cannot start a service thread (errno \(rc))") }
        }
    }

    func wakePeerService() {
        if peers.wakeFD >= 0 {
            var one: UInt64 = 1
            _ = write(peers.wakeFD, &one, 8)
        }
    }

    /// The answering thread's loop (never returns).
    private func servePeers() {
        guard peers.listenFD >= 0 else { return }
        while true {
            let c = accept(peers.listenFD, nil, nil)
            if c >= 0 {
                _ = fcntl(c, F_SETFD, FD_CLOEXEC)
                setNonBlocking(c)
                serveConnection(c)
                close(c)
            } else if errno != EINTR && errno != ECONNABORTED {
                usleep(10_000)
            }
        }
    }

    /// The asking thread's loop (never returns): introductions, and peers given up on.
    private func runPeerChores() {
        while true {
            var p = pollfd(fd: peers.wakeFD, events: Int16(POLLIN), revents: 0)
            _ = poll(&p, 1, 50)
            if p.revents != 0 {
                var v: UInt64 = 0
                _ = read(peers.wakeFD, &v, 8)
            }
            sendCloseNotices()
            introducePendingLinks()
            giveUpOnSilentPeers()
            releaseExpiredUDHolds()
            greetUDHosts()
            destroyRetiredAHs()
        }
    }

    private func serveConnection(_ fd: Int32) {
        var one: Int32 = 1
        _ = setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
        let deadline = monotonicNS() &+ 2_000_000_000
        guard let bytes = PeerSocket.readAll(fd, deadline) else { return }
        if let parts = PeerBatch.decode(bytes) {
            // `hello`s, `moved` claims, `pausing` announcements and `closed` notices come in
            // batches (one verb per batch); anything else in one is refused part by part.
            let decoded = parts.map { PeerMessage.decode($0) ?? (PeerMessage("error"), [], nil) }
            let source = PeerHost(peerOf: fd)
            let replies = decoded.allSatisfy { $0.message.verb == "hello" }
                ? decoded.map { answerHello($0.message, port: peers.port, from: source).encoded(key: nil) }
                : decoded.allSatisfy { $0.message.verb == "pausing" } ? decoded.map(answerPausing)
                : decoded.allSatisfy { $0.message.verb == "closed" } ? decoded.map(answerClosed) : answerMoved(decoded)
            _ = PeerSocket.writeAll(fd, PeerBatch.encode(replies), deadline)
            return
        }
        guard let d = PeerMessage.decode(bytes) else { return }
        let reply: [UInt8]
        switch d.message.verb {
        case "hello":
            reply = answerHello(d.message, port: peers.port, from: PeerHost(peerOf: fd)).encoded(key: nil)
        case "moved":
            reply = answerMoved(d)
        case "pausing":
            reply = answerPausing(d)
        case "closed":
            reply = answerClosed(d)
        case "words":
            reply = answerWords(d)
        case "ud-pausing":
            reply = answerUDPausing(d.message, from: PeerHost(peerOf: fd)).encoded(key: nil)
        case "ud-moved":
            reply = answerUDMoved(d.message, from: PeerHost(peerOf: fd)).encoded(key: nil)
        case "ud-hello":
            reply = answerUDHello(d.message, from: PeerHost(peerOf: fd)).encoded(key: nil)
        default:
            reply = PeerMessage("error").encoded(key: nil)
        }
        _ = PeerSocket.writeAll(fd, reply, deadline)
    }

    /// Links whose error completions have been held back for longer than the peer timeout: the
    /// peer is not coming back; the application gets the errors native verbs would have given.
    /// A link held back because our own device went away (its first error completion came before
    /// the port went down: a NIC pulled) starts the recovery as soon as that shows.
    private func giveUpOnSilentPeers() {
        let now = monotonicNS()
        let lost: [ContextRecord] = withControlLock {
            var seen: [ContextRecord] = [], lost: [ContextRecord] = []
            for link in peers.links.values where link.suspectSince != nil && link.state == .ready {
                let c = link.qp.context
                guard !seen.contains(where: { $0 === c }) else { continue }
                seen.append(c)
                if !isMoving(c) && deviceLost(c) { lost.append(c) }
            }
            return lost
        }
        for c in lost {
            Log.info("\(c.currentDeviceName): gone while a connection's errors were held back for its peer: unplanned recovery")
            trigger(c)
        }
        withControlLock {
            for link in peers.links.values {
                guard let since = link.suspectSince, link.state == .ready, now &- since >= peers.timeoutNS,
                      now >= link.pausedUntil else { continue }
                Log.warn("peer: \(link.label): no word from the peer shim for \(peers.timeoutNS / 1_000_000) ms after its connection failed: the errors reach the application")
                failLink(link, status: link.heldStatus)
            }
        }
    }
}
