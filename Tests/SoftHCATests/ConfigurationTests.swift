import CVerbs
import Testing
@testable import SoftHCA

extension SoftHCATests {
    @Test func configurationDefaults() throws {
        let c = try SoftHCA.Configuration(parsing: "")
        #expect(c.devices == 2 && c.portsPerDevice == 1 && c.linkLayer == .infiniband && c.namePrefix == "softhca")
        #expect(c.faults.isEmpty)
    }

    @Test func configurationItems() throws {
        let c = try SoftHCA.Configuration(parsing: "devices=3, ports=2,link=eth,name=vf,vectors=4,keys=distinct,fail=create_qp:ENOMEM:2:1:vf1")
        #expect(c.devices == 3 && c.portsPerDevice == 2 && c.linkLayer == .ethernet && c.namePrefix == "vf")
        #expect(c.completionVectors == 4 && c.distinctRemoteKeys)
        #expect(c.faults.count == 1)
        let f = try #require(c.faults.first)
        #expect(f.entry == "create_qp" && f.value == ENOMEM && f.count == 2 && f.skip == 1 && f.device == "vf1")
    }

    @Test(arguments: ["devices=65", "ports=0", "link=fddi", "devices", "fail=create_qp", "fail=create_qp:ENOTANERRNO", "colour=blue"])
    func configurationRejects(_ text: String) {
        #expect(throws: SoftHCA.ConfigurationError.self) { try SoftHCA.Configuration(parsing: text) }
    }

    @Test func devicesFollowTheConfiguration() {
        let h = Harness("devices=3,name=vf")
        #expect(h.devices.count == 3)
        #expect(h.devices.map { String(cString: h.L.get_device_name!($0)!) } == ["vf0", "vf1", "vf2"])
        #expect(SoftHCA.deviceNames == ["vf0", "vf1", "vf2"])
        let eth = Harness("devices=1,link=eth")
        let pa = eth.portAttr(0)
        #expect(pa.link_layer == UInt8(IBV_LINK_LAYER_ETHERNET) && pa.lid == 0 && pa.state == IBV_PORT_ACTIVE)
    }
}
