import CVerbs
import Glibc
import StableVerbsABI
import Testing
@testable import SoftHCA

/// The STABLEVERBS_SOFTHCA syntax, and the fabric a configuration builds.
extension SoftHCATests {
    @Test func configurationDefaults() throws {
        let c = try SoftHCA.Configuration(parsing: "")
        #expect(c.devices == 2 && c.portsPerDevice == 1 && c.linkLayer == .infiniband && c.namePrefix == "softhca")
        #expect(c.completionVectors == 1 && !c.distinctRemoteKeys)
        #expect(c.faults.isEmpty)
        #expect(try SoftHCA.Configuration(parsing: " , ,") == SoftHCA.Configuration(), "empty items are ignored")
    }

    @Test func configurationItems() throws {
        let c = try SoftHCA.Configuration(parsing: "devices=3, ports=2,link=eth,name=vf,vectors=4,keys=distinct,fail=create_qp:ENOMEM:2:1:vf1")
        #expect(c.devices == 3 && c.portsPerDevice == 2 && c.linkLayer == .ethernet && c.namePrefix == "vf")
        #expect(c.completionVectors == 4 && c.distinctRemoteKeys)
        #expect(c.faults.count == 1)
        let f = try #require(c.faults.first)
        #expect(f.entry == "create_qp" && f.value == ENOMEM && f.count == 2 && f.skip == 1 && f.device == "vf1")
    }

    @Test func configurationSpellings() throws {
        for (text, link) in [("link=IB", SoftHCA.Configuration.LinkLayer.infiniband), ("link=infiniband", .infiniband),
                             ("link=roce", .ethernet), ("link=Ethernet", .ethernet), ("LINK=rocev2", .ethernet)] {
            #expect(try SoftHCA.Configuration(parsing: text).linkLayer == link, "\(text)")
        }
        #expect(try SoftHCA.Configuration(parsing: "disassoc_destroy=yes").allowDisassociatedDestroy)
        #expect(try !SoftHCA.Configuration(parsing: "disassoc_destroy=0").allowDisassociatedDestroy)
        #expect(try SoftHCA.Configuration(parsing: "keys=distinct,keys=same").distinctRemoteKeys == false, "the last item wins")
        #expect(try SoftHCA.Configuration(parsing: "devices=0").devices == 0)
    }

    @Test func faultItems() throws {
        let c = try SoftHCA.Configuration(parsing:
            "fail=alloc_pd:12,fail=reg_mr:eagain:*,fail=post_send:EIO:-1:4,fail=completion_error:RETRY_EXC_ERR:2,fail=completion_error:IBV_WC_REM_ACCESS_ERR,fail=completion_error:5:1:0:softhca1")
        #expect(c.faults == [
            SoftHCA.Fault(entry: "alloc_pd", value: ENOMEM, count: 1, skip: 0),
            SoftHCA.Fault(entry: "reg_mr", value: EAGAIN, count: nil),
            SoftHCA.Fault(entry: "post_send", value: EIO, count: nil, skip: 4),
            SoftHCA.Fault(entry: "completion_error", value: Int32(IBV_WC_RETRY_EXC_ERR.rawValue), count: 2),
            SoftHCA.Fault(entry: "completion_error", value: Int32(IBV_WC_REM_ACCESS_ERR.rawValue)),
            SoftHCA.Fault(entry: "completion_error", value: Int32(IBV_WC_WR_FLUSH_ERR.rawValue), count: 1, skip: 0, device: "softhca1"),
        ])
        let gone = try SoftHCA.Configuration(parsing: "fail=create_qp:gone:1:3")
        #expect(gone.faults == [SoftHCA.Fault(entry: "create_qp", value: EIO, count: 1, skip: 3, removesDevice: true)])
        #expect(gone.faults[0].description == "create_qp:gone:1:3")
    }

    @Test(arguments: [
        "devices=65", "devices=-1", "devices=two", "ports=0", "ports=9", "link=fddi", "devices", "=3", "name=",
        "name=\(String(repeating: "x", count: 60))", "vectors=0", "vectors=1025", "keys=random", "disassoc_destroy=maybe",
        "fail=create_qp", "fail=:ENOMEM", "fail=create_qp:ENOTANERRNO", "fail=create_qp:0", "fail=create_qp:-5",
        "fail=create_qp:ENOMEM:0", "fail=create_qp:ENOMEM:x", "fail=create_qp:ENOMEM:1:-1", "fail=create_qp:ENOMEM:1:0:dev:extra",
        "fail=completion_error:SUCCESS", "fail=completion_error:ENOMEM", "fail=completion_error:99", "colour=blue",
    ])
    func configurationRejects(_ text: String) {
        #expect(throws: SoftHCA.ConfigurationError.self) { try SoftHCA.Configuration(parsing: text) }
    }

    @Test func configurationErrorsNameTheVariableAndTheItem() {
        #expect(throws: SoftHCA.ConfigurationError("unknown key 'colour'")) { try SoftHCA.Configuration(parsing: "colour=blue") }
        do {
            _ = try SoftHCA.Configuration(parsing: "devices=2,ports=99")
            Issue.record("ports=99 was accepted")
        } catch {
            #expect(error.description.hasPrefix("STABLEVERBS_SOFTHCA: ") && error.description.contains("ports=99"))
        }
        // A bad string does not reset the fabric: the previous configuration stays in force.
        _ = Harness("devices=3")
        #expect(throws: SoftHCA.ConfigurationError.self) { try SoftHCA.lower(configurationString: "devices=3,link=x") }
        #expect(SoftHCA.deviceNames.count == 3)
    }

    @Test func descriptionRoundTrips() throws {
        let text = "devices=3,ports=2,link=eth,name=vf,vectors=4,keys=distinct,disassoc_destroy=1,fail=create_qp:12:2:1:vf1,fail=post_send:5:*"
        let c = try SoftHCA.Configuration(parsing: text)
        #expect(try SoftHCA.Configuration(parsing: c.description) == c)
        #expect(c.description.contains("fail=post_send:5:*"))
    }

    @Test func devicesFollowTheConfiguration() {
        let h = Harness("devices=3,name=vf")
        #expect(h.devices.count == 3)
        #expect(h.devices.map { String(cString: h.L.get_device_name!($0)!) } == ["vf0", "vf1", "vf2"])
        #expect(SoftHCA.deviceNames == ["vf0", "vf1", "vf2"])
        #expect(String(cString: h.L.name) == "softhca")
        let eth = Harness("devices=1,link=eth")
        let pa = eth.portAttr(0)
        #expect(pa.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) && pa.lid == 0 && pa.state == IBV_PORT_ACTIVE)
        #expect(pa.flags & UInt8(IB_UVERBS_QPF_GRH_REQUIRED.rawValue) != 0, "RoCE needs a GRH")
        #expect(Harness("devices=0").devices.isEmpty)
    }

    @Test func devicesHaveDistinctIdentities() throws {
        let h = Harness("devices=2,ports=2")
        var attr = ibv_device_attr()
        #expect(h.L.query_device!(h.contexts[0], &attr) == 0)
        #expect(attr.phys_port_cnt == 2)
        #expect(attr.node_guid == h.L.get_device_guid!(h.devices[0]), "both say the node GUID in network order")
        #expect(h.L.get_device_guid!(h.devices[0]) != h.L.get_device_guid!(h.devices[1]))
        #expect(h.L.get_device_index!(h.devices[0]) != h.L.get_device_index!(h.devices[1]))
        let lids = [h.portAttr(0, 1).lid, h.portAttr(0, 2).lid, h.portAttr(1, 1).lid, h.portAttr(1, 2).lid]
        #expect(Set(lids).count == 4 && !lids.contains(0), "every IB port has its own LID")
        var pa = ibv_port_attr()
        #expect(___ibv_query_port(h.contexts[0], 3, &pa) == EINVAL, "a port the device lacks")
        // The GID of port 1 is fe80:: + the port GUID.
        let g = h.gid(0)
        let id = try #require(SoftHCA.identity(of: "softhca0"))
        #expect(withUnsafeBytes(of: g) { Array($0) } == id.gids[0])
        #expect(id.gids[0].prefix(2) == [0xfe, 0x80])
    }

    @Test func vectorsAndKeysFollowTheConfiguration() throws {
        let h = Harness("devices=1,vectors=3,keys=distinct")
        #expect(h.contexts[0].pointee.num_comp_vectors == 3)
        #expect(h.L.create_cq!(h.contexts[0], 4, nil, nil, 2) != nil)
        let (cq, e) = withErrno { h.L.create_cq!(h.contexts[0], 4, nil, nil, 3) }
        #expect(cq == nil && e == EINVAL, "vector 3 of 3")
        let b = h.buffer(h.pd())
        #expect(b.lkey != b.rkey)
        let same = Harness("devices=1")
        let s = same.buffer(same.pd())
        #expect(s.lkey == s.rkey)
    }

    @Test func configuredFaultsAreArmedAtReset() throws {
        let h = Harness("devices=1,fail=alloc_pd:EAGAIN:2:1")
        #expect(SoftHCA.pendingFaults == [SoftHCA.Fault(entry: "alloc_pd", value: EAGAIN, count: 2, skip: 1)])
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil)
        #expect(withErrno { h.L.alloc_pd!(h.contexts[0]) } .1 == EAGAIN)
        #expect(withErrno { h.L.alloc_pd!(h.contexts[0]) } .1 == EAGAIN)
        #expect(h.L.alloc_pd!(h.contexts[0]) != nil)
        #expect(SoftHCA.pendingFaults.isEmpty)
        // Resetting drops faults not used up.
        SoftHCA.failNext("alloc_pd", errno: EIO, count: nil)
        let fresh = Harness("devices=1")
        #expect(SoftHCA.pendingFaults.isEmpty && fresh.L.alloc_pd!(fresh.contexts[0]) != nil)
    }

    @Test func resetReleasesEverything() {
        let h = Harness()
        let p = h.pair()
        _ = h.L.create_comp_channel!(h.contexts[0])
        #expect(postRecv(p.b, [p.bufB.sge()]) == 0)
        #expect(SoftHCA.liveObjects["qps"] == 2 && SoftHCA.liveObjects["mrs"] == 2 && SoftHCA.liveObjects["contexts"] == 2)
        let oldQPN = p.a.pointee.qp_num
        let h2 = Harness()
        #expect(SoftHCA.liveObjects.filter { $0.key != "contexts" }.values.allSatisfy { $0 == 0 })
        #expect(SoftHCA.liveObjects["contexts"] == 2)
        #expect(!SoftHCA.owns(p.a) && SoftHCA.owns(h2.contexts[0]))
        let q = h2.qp(h2.pd(), h2.cq())
        #expect(q.pointee.qp_num > oldQPN, "QP numbers are not reused across resets")
    }
}
