package docker

// Dir is the scratch engine's directory, for tests that check it is gone.
func (s *Scratch) Dir() string { return s.dir }
