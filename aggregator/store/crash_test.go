package store

const crashChildEnv = "HEARTBEAT_STORE_CRASH_CHILD"

func crashChild(dir string) {}
