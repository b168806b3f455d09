"""What the server, the simulator and the bench share: settings machinery and process plumbing."""
