/// The release build of libstableverbs.so the scripts preload (the Swift runtime linked in
/// statically, as for deployment): the same command the scripts run when they build it.
struct LibraryBuild {
    let jobs: Int?

    func run(with runner: StepRunner) async throws {
        var arguments = [
            "build", "--package-path", Workspace.root.path,
            "-c", "release", "-Xswiftc", "-static-stdlib", "--omit-frame-pointers", "--product", "stableverbs",
        ]
        if let jobs { arguments += ["-j", String(jobs)] }
        try await runner.run("swift", arguments, what: "building libstableverbs.so (swift \(arguments.joined(separator: " ")))")
    }
}
