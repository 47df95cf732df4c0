"""Methods: the papers' maths as pure functions of tensors, each testable alone. DDT's phi (ddt), the SFT loss
family (losses), Hinted Decoding's mixing rule (hinted), answer checking (answers). Imports only runtime."""
