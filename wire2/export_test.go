package wire2

// DecodeLibrary is Decode without the fast path: fxamacker/cbor only.
func (f *Frame) DecodeLibrary(p []byte) error { return f.decode(p, false) }

// AppendLibrary is Append without the fast path.
func (e *Encoder) AppendLibrary(dst []byte, m Message) ([]byte, error) {
	return e.append(dst, m, false)
}
