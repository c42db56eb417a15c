"""The receiving side: reassemble published sessions into a store on disk."""
