//! A mutable slice that pool tasks fill in parallel, each task writing only indices that no
//! other task touches (e.g. its own output rows). The pool's `run` takes a shared closure, so
//! plain `&mut` cannot be handed to tasks; this wrapper carries the pointer and leaves the
//! disjointness promise to the (unsafe) call sites.

use std::marker::PhantomData;

pub(crate) struct DisjointSlice<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: tasks only write disjoint indices (the contract of `write` / `range_mut`), so sharing
// the pointer across threads is like handing each thread its own `&mut` sub-slice.
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}

impl<'a, T: Copy> DisjointSlice<'a, T> {
    pub(crate) fn new(slice: &'a mut [T]) -> Self {
        Self { ptr: slice.as_mut_ptr(), len: slice.len(), _borrow: PhantomData }
    }

    /// Elements in the slice.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Writes `value` at `index`.
    ///
    /// # Safety
    /// No other task reads or writes `index` while the slice is shared.
    #[inline]
    pub(crate) unsafe fn write(&self, index: usize, value: T) {
        assert!(index < self.len, "index {index} out of bounds ({})", self.len);
        self.ptr.add(index).write(value);
    }

    /// The sub-slice `start .. start + len`.
    ///
    /// # Safety
    /// No other task reads or writes any index of that range while the slice is shared.
    #[inline]
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn range_mut(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start <= self.len && len <= self.len - start, "range {start}+{len} out of bounds ({})", self.len);
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}
